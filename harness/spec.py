"""The sweep spec: a typed, validated description of a benchmark grid.

One registry of keys (`KEYS`) drives both the YAML file and the CLI flags, so every
spec key is a flag (`batch_sizes` <-> `--batch-sizes`), lists are comma-separated on
the command line, and an unknown key is rejected with a suggestion. CLI values override
the file's. Bad input raises `ScyllaError` with a one-line message that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.executors import EXECUTORS
from scylla_impl import compiled, devices, dtypes
from scylla_impl.methods import LABELS, NAMES, TRAINED, TRAINING_FREE
from workloads.errors import ScyllaError, os_error
from workloads.long_prompts import LONG_PROMPTS, REFUSE

AUTO = "auto"
# total_tokens "tied": each fixed top_k gets the size the roofline policy ties to it (EAGLE-2's
# 60 for top_k 10), so a narrow tree is measured instead of pruned for exceeding its pool.
TIED = "tied"
KNOWN_METHODS = NAMES
# Methods whose draft needs no checkpoint: given in --methods alone, they take this draft.
TRAINING_FREE_DRAFTS = {m: m for m in TRAINING_FREE}
RANDOM_DRAFTS = tuple(f"random:{m}" for m in TRAINED)
TURNS = ("all", "first")
_METHOD_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs. Lists are tuples; `draft` maps method -> draft specs."""

    target: str = "default"
    methods: tuple[str, ...] = ()
    draft: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    datasets: tuple[str, ...] = ("mt_bench",)
    batch_sizes: tuple[int, ...] = (1,)
    top_k: tuple[int | str, ...] = (10,)
    depths: tuple[int, ...] = (5,)
    total_tokens: tuple[int | str, ...] = (TIED,)
    temperatures: tuple[float, ...] = (0.0,)
    top_p: float = 1.0
    prompts: int = 8
    max_new_tokens: int = 128
    turns: str = "all"
    data_dir: str | None = None
    profile: str | None = None
    dtype: str = dtypes.AUTO
    device: str = devices.AUTO
    compile: bool = False
    threads: int | None = None
    seed: int = 0
    system_prompt: str | None = None
    warmup: int = 8
    step_table: bool = False
    paired_ar: bool = False
    long_prompts: str = REFUSE
    # method -> tokens of the prompt-lookup chain grafted under its trees (DecodeConfig.lookup_tokens)
    lookup_tokens: Mapping[str, int] = field(default_factory=dict)
    executor: str = "local"
    ray_address: str | None = None
    workers: int | None = None
    retries: int = 2
    out: str | None = None

    @property
    def all_methods(self) -> tuple[str, ...]:
        """Methods in run order: `ar` first (always present: every cell needs its partner)."""
        rest = [m for m in self.methods if m != "ar"]
        return ("ar", *rest)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able dict (round-trips through `from_mapping`)."""
        d = dataclasses.asdict(self)
        d["draft"] = {m: list(v) for m, v in self.draft.items()}
        d["lookup_tokens"] = dict(self.lookup_tokens)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


# ---------------------------------------------------------------- value parsers


def _items(key: str, value: Any) -> list[Any]:
    """A list from a YAML list, a scalar, or a comma-separated string."""
    if value is None:
        raise ScyllaError(f"{key}: a value is required")
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",")]
        if any(not s for s in items):
            raise ScyllaError(f"{key}: empty item in {value!r}")
        return items
    if isinstance(value, (list, tuple)):
        if not value:
            raise ScyllaError(f"{key}: the list is empty")
        return list(value)
    return [value]


def _dedupe(items: list[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


def _int(key: str, v: Any, minimum: int) -> int:
    if isinstance(v, bool):
        raise ScyllaError(f"{key}: {v!r} is not an integer")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise ScyllaError(f"{key}: {v!r} is not an integer") from None
    if not isinstance(v, int):
        raise ScyllaError(f"{key}: {v!r} is not an integer")
    if v < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ScyllaError(f"{key}: {v} is not {what}")
    return v


def _float(key: str, v: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(v, bool):
        raise ScyllaError(f"{key}: {v!r} is not a number")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ScyllaError(f"{key}: {v!r} is not a number") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise ScyllaError(f"{key}: {v!r} is not a finite number")
    if minimum is not None and x < minimum:
        raise ScyllaError(f"{key}: {x:g} is below {minimum:g}")
    if maximum is not None and x > maximum:
        raise ScyllaError(f"{key}: {x:g} is above {maximum:g}")
    return x


def _str(key: str, v: Any) -> str:
    if v is None or isinstance(v, (list, dict)):
        raise ScyllaError(f"{key}: expected a single value, got {v!r}")
    s = str(v).strip()
    if not s:
        raise ScyllaError(f"{key}: empty value")
    return s


def _ray_address(key: str, v: Any, base: Path | None) -> str:
    s = _str(key, v)
    if s != "auto" and not re.match(r"^(ray://)?(\[[0-9a-fA-F:]+\]|[^\s:/\[\]]+):\d+$", s):
        raise ScyllaError(f"{key}: {s!r} is not HOST:PORT, ray://HOST:PORT or auto")
    return s


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any, Path | None], str]:
    def parse(key: str, v: Any, base: Path | None) -> str:
        s = _str(key, v)
        if s not in choices:
            raise ScyllaError(f"{key}: {s!r} is not one of {', '.join(choices)}")
        return s

    return parse


def _path(key: str, v: Any, base: Path | None) -> str:
    p = Path(_str(key, v)).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p.resolve()) if p.exists() else str(p)


def _pos_ints(key: str, v: Any, base: Path | None) -> tuple[int, ...]:
    return _dedupe([_int(key, x, 1) for x in _items(key, v)])


def _ints_or(word: str, key: str, v: Any) -> tuple[int | str, ...]:
    """Positive integers, or `word` (auto, tied) standing for a size chosen per cell."""
    out: list[int | str] = []
    for x in _items(key, v):
        if isinstance(x, str) and x.strip().lower() == word:
            out.append(word)
            continue
        try:
            out.append(_int(key, x, 1))
        except ScyllaError:
            raise ScyllaError(f"{key}: {x!r} is neither a positive integer nor '{word}'") from None
    return _dedupe(out)


def _top_k(key: str, v: Any, base: Path | None) -> tuple[int | str, ...]:
    return _ints_or(AUTO, key, v)


def _total_tokens(key: str, v: Any, base: Path | None) -> tuple[int | str, ...]:
    vals = _ints_or(TIED, key, v)
    for t in vals:
        if t != TIED and t < 2:
            raise ScyllaError(f"{key}: {t} is too small (the tree holds the root plus at least one draft token: use >= 2)")
    return vals


def _temperatures(key: str, v: Any, base: Path | None) -> tuple[float, ...]:
    return _dedupe([_float(key, x, minimum=0.0) for x in _items(key, v)])


def _methods(key: str, v: Any, base: Path | None) -> tuple[str, ...]:
    out = []
    for x in _items(key, v):
        m = _str(key, x).lower()
        if not _METHOD_RE.match(m):
            raise ScyllaError(f"{key}: {m!r} is not a method name (known: {', '.join(KNOWN_METHODS)})")
        out.append(m)
    return _dedupe(out)


def _datasets(key: str, v: Any, base: Path | None) -> tuple[str, ...]:
    """Names as given; EAGLE's folder names (sum, qa) become the registry's names."""
    from workloads.datasets import ALIASES

    return _dedupe([ALIASES.get(n, n) for n in (_str(key, x) for x in _items(key, v))])


def _draft_value(method: str, value: str, base: Path | None) -> str:
    value = value.strip()
    if value in ("oracle", *TRAINING_FREE_DRAFTS.values()) or value.startswith("random:"):
        if value.startswith("random:") and value not in RANDOM_DRAFTS:
            raise ScyllaError(f"draft for {method}: unknown {value!r} (known: {', '.join(RANDOM_DRAFTS)}, oracle, or a checkpoint folder)")
        check_draft_kind(method, value, value.removeprefix("random:"))  # a folder's kind: once it loads (runner)
        return value
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    if not p.is_dir():
        raise ScyllaError(f"draft for {method}: no checkpoint folder at {p} (give a folder with config.json, random:{method if method in TRAINED else 'scylla'}, or oracle)")
    if not (p / "config.json").exists():
        raise ScyllaError(f"draft for {method}: {p} has no config.json (not a draft checkpoint folder)")
    return str(p.resolve())


def _method_pairs(key: str, v: Any, form: str) -> list[tuple[str, Any, str]]:
    """(method, its raw value, the label an error about the value names) from YAML
    {method: value} or CLI ["method=value", ...]; method names lower-cased and checked."""
    if isinstance(v, Mapping):
        raw = [(str(m), value, f"{key}.{m}") for m, value in v.items()]
    else:
        raw = []
        for item in _items(key, v) if not isinstance(v, str) else [v]:
            item = _str(key, item)
            m, eq, value = item.partition("=")
            if not eq:
                raise ScyllaError(f"{key}: {item!r} is not {form}")
            raw.append((m.strip(), value, f"{key} {m}"))
    pairs = []
    for m, value, label in raw:
        m = m.lower()
        if not _METHOD_RE.match(m):
            raise ScyllaError(f"{key}: {m!r} is not a method name")
        pairs.append((m, value, label))
    return pairs


def _drafts(key: str, v: Any, base: Path | None) -> dict[str, tuple[str, ...]]:
    """YAML: {method: spec | [spec, ...]}; CLI: ["method=spec[,spec]", ...]."""
    out: dict[str, list[str]] = {}
    for m, specs, label in _method_pairs(key, v, "METHOD=DRAFT (e.g. scylla=random:scylla)"):
        if m == "ar":
            raise ScyllaError(f"{key}: the ar baseline takes no draft")
        for s in _items(label, specs):
            resolved = _draft_value(m, _str(label, s), base)
            if resolved not in out.setdefault(m, []):
                out[m].append(resolved)
    return {m: tuple(v) for m, v in out.items()}


def _lookup_tokens(key: str, v: Any, base: Path | None) -> dict[str, int]:
    """YAML: {method: tokens}; CLI: ["method=tokens", ...]."""
    out = {}
    for m, tokens, _ in _method_pairs(key, v, "METHOD=TOKENS (e.g. eagle2=4)"):
        if m == "ar":
            raise ScyllaError(f"{key}: 'ar' is not the name of a method with a draft")
        out[m] = _int(f"{key} {m}", tokens.strip() if isinstance(tokens, str) else tokens, minimum=1)
    return out


@dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[str, Any, Path | None], Any]
    help: str
    metavar: str = "V"
    flag: bool = False  # boolean switch on the CLI
    multiple: bool = False  # repeatable on the CLI

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _bool(key: str, v: Any, base: Path | None) -> bool:
    if isinstance(v, bool):
        return v
    s = _str(key, v).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ScyllaError(f"{key}: {v!r} is not true or false")


def _opt_int(minimum: int) -> Callable[[str, Any, Path | None], int]:
    return lambda key, v, base: _int(key, v, minimum)


KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        Key("target", lambda k, v, b: _str(k, v), "target model: 'default' (embedded SmolLM2-135M-Instruct) or a Hugging Face path", "TARGET"),
        Key("methods", _methods, "methods to run, comma-separated (ar is always added as the baseline)", "LIST"),
        Key("draft", _drafts, f"draft per method, METHOD=DRAFT; DRAFT is a checkpoint folder, random:{'|'.join(TRAINED)} or oracle; repeatable", "METHOD=DRAFT", multiple=True),
        Key("datasets", _datasets, "datasets, comma-separated", "LIST"),
        Key("batch_sizes", _pos_ints, "batch sizes, comma-separated", "LIST"),
        Key("top_k", _top_k, "tree top-k values, comma-separated; 'auto': per batch size the tree (top_k, depth, size) or AR with the most tokens/s, priced with --profile's verify curve and the draft's measured acceptance", "LIST"),
        Key("depths", _pos_ints, "tree depths, comma-separated", "LIST"),
        Key("total_tokens", _total_tokens, "tree sizes (root included), comma-separated; 'tied' (the default) "
            "gives each top_k the size the roofline policy ties to it (60 for top_k 10, 10 for 4, 4 for 1 at depth 3)",
            "LIST"),
        Key("temperatures", _temperatures, "sampling temperatures, comma-separated (0 = greedy)", "LIST"),
        Key("top_p", lambda k, v, b: _float(k, v, minimum=0.0, maximum=1.0), "nucleus top-p for temperature > 0", "P"),
        Key("prompts", _opt_int(1), "prompts per dataset", "N"),
        Key("max_new_tokens", _opt_int(1), "new tokens per request", "N"),
        Key("turns", _choice(TURNS), "multi-turn datasets (MT-bench): 'all' turns or the 'first' only", "all|first"),
        Key("data_dir", _path, "folder of EAGLE-format eval files (<dir>/<name>/question.jsonl)", "DIR"),
        Key("profile", _path, "roofline profile folder (from `scylla profile`), needed by top_k auto", "DIR"),
        Key("dtype", _choice(dtypes.CHOICES), "target and draft dtype; " + dtypes.DECODE_HELP, "DTYPE"),
        Key("device", lambda k, v, b: devices.check_name(_str(k, v)), "device: " + devices.HELP, "DEVICE"),
        Key("compile", _bool, compiled.HELP + "; the warm-up compiles, so it needs --warmup >= 1", flag=True),
        Key("threads", _opt_int(1), "torch CPU threads (default: torch's)", "N"),
        Key("seed", _opt_int(0), "random seed", "N"),
        Key("system_prompt", lambda k, v, b: str(v) if v is not None else None, "system prompt for the chat template", "TEXT"),
        Key("warmup", _opt_int(0), "warm-up new tokens per cell before timing (0: none)", "N"),
        Key("step_table", _bool, "also write the per-step table (steps.parquet)", flag=True),
        Key("paired_ar", _bool, "each speculative cell also decodes every batch without its draft, alternating "
            "which goes first, and its speedup divides by that AR's tokens/s (paired_ar_tokens_per_s): the "
            "ratio then holds while the machine's speed drifts between cells; the AR decodes add about as much "
            "time as the speculative ones", flag=True),
        Key("long_prompts", _choice(LONG_PROMPTS), "a prompt longer than the target's context leaves room for: "
            "'refuse' fails its cell, saying so; 'truncate' keeps its first and last halves of that room (the "
            "context less max_new_tokens and 64 positions for a tree), the same cut for every cell "
            "(workloads/long_prompts.py); each cell counts its cut prompts (prompts_truncated)", "|".join(LONG_PROMPTS)),
        Key("lookup_tokens", _lookup_tokens, "per method, METHOD=TOKENS: graft up to TOKENS tokens of the "
            "prompt-lookup proposal (the text that followed the last n-gram's earlier occurrence in the prompt or "
            "output) under the root of each of its draft trees, so one verify keeps the longer of the draft's "
            "guess and the copy; the extra nodes count in drafted_nodes. Give a second method name the same "
            "--draft to compare with and without in one sweep; repeatable", "METHOD=TOKENS", multiple=True),
        Key("executor", lambda k, v, b: _choice(tuple(EXECUTORS))(k, v, b), "where cells run: local (this process, one after another) or "
            "ray (one worker per GPU, or per --threads CPUs, of a Ray cluster)", "|".join(EXECUTORS)),
        Key("ray_address", _ray_address, "executor ray: the cluster to join (HOST:6379, or "
            "ray://HOST:10001); default: start a local Ray instance for the sweep", "ADDRESS"),
        Key("workers", _opt_int(1), "executor ray: workers to start (default: as many as the cluster holds)", "N"),
        Key("retries", _opt_int(0), "executor ray: times a cell whose worker process died runs again on a new "
            "worker before it is recorded as failed", "N"),
        Key("out", _path, "results folder", "DIR"),
    ]
}


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_mapping(raw: Mapping[str, Any], base: Path | None, where: str) -> dict[str, Any]:
    """Parse a raw mapping of spec keys into typed values, rejecting unknown keys."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = str(k).replace("-", "_")
        if key not in KEYS:
            raise ScyllaError(f"{where}: unknown key {k!r}{_suggest(key)}; known keys: {', '.join(KEYS)}")
        if key in out:
            raise ScyllaError(f"{where}: key {key!r} given twice")
        if v is None and key in ("data_dir", "profile", "threads", "system_prompt", "ray_address", "workers", "out"):
            out[key] = None
            continue
        out[key] = KEYS[key].parse(key, v, base)
    return out


def load_yaml(path: str | Path) -> tuple[dict[str, Any], Path]:
    p = Path(path)
    if not p.is_file():
        raise ScyllaError(f"sweep spec {p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ScyllaError(f"sweep spec {p}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise os_error(err, "read the sweep spec", p) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScyllaError(f"sweep spec {p}: not valid YAML{at}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ScyllaError(f"sweep spec {p}: expected a mapping of keys, got {type(raw).__name__}")
    return dict(raw), p.resolve().parent


def build_spec(yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Spec from an optional YAML file plus CLI overrides (raw strings), validated."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        raw, base = load_yaml(yaml_path)
        values.update(parse_mapping(raw, base, f"sweep spec {yaml_path}"))
    if overrides:
        given = {k: v for k, v in overrides.items() if v is not None and v != ()}
        parsed = parse_mapping(given, Path.cwd(), "command line")
        if "draft" in parsed and "draft" in values:
            merged = dict(values["draft"])
            merged.update(parsed.pop("draft"))
            values["draft"] = merged
        values.update(parsed)
    if "methods" not in values:
        values["methods"] = ("ar", *values.get("draft", {}))
    free = {m: (TRAINING_FREE_DRAFTS[m],) for m in values["methods"]
            if m in TRAINING_FREE_DRAFTS and m not in values.get("draft", {})}
    if free:
        values["draft"] = {**values.get("draft", {}), **free}
    spec = SweepSpec(**values)
    validate(spec)
    return spec


def spec_from_dict(d: Mapping[str, Any]) -> SweepSpec:
    """Inverse of `SweepSpec.to_dict` (used to re-read a saved spec)."""
    spec = SweepSpec(**parse_mapping(dict(d), None, "saved spec"))
    validate(spec)
    return spec


def dataset_names() -> tuple[str, ...]:
    from workloads.datasets import DATASET_NAMES

    return tuple(DATASET_NAMES)


def validate(spec: SweepSpec) -> None:
    """Cross-key checks. Raises ScyllaError naming the fix."""
    if spec.compile and spec.warmup < 1:
        raise ScyllaError("compile: needs --warmup >= 1 (the warm-up compiles each cell's shapes; without it the "
                          "compiles would land in the timed run)")
    known = dataset_names()
    for d in spec.datasets:
        if d not in known:
            raise ScyllaError(f"datasets: unknown dataset {d!r}{_close(d, known)}; known: {', '.join(known)}")
    methods = spec.methods or ("ar",)
    for m in methods:
        if m != "ar" and m not in spec.draft:
            if m not in KNOWN_METHODS:  # a typo, or a name of the user's own that needs its draft
                raise ScyllaError(f"method {m!r} is not one of {', '.join(KNOWN_METHODS)}{_close(m, KNOWN_METHODS)}; "
                                  f"a method named by you runs the draft given as --draft {m}=PATH")
            raise ScyllaError(f"method {m!r} has no draft checkpoint: add --draft {m}=PATH "
                              f"(or {m}=random:{m} / {m}=oracle for an untrained draft)")
    for m in spec.draft:
        if m not in methods:
            raise ScyllaError(f"draft given for method {m!r}, which is not in methods ({', '.join(methods)}){_close(m, methods)}")
    for m in spec.lookup_tokens:
        if m not in methods:
            raise ScyllaError(f"lookup_tokens given for method {m!r}, which is not in methods "
                              f"({', '.join(methods)}){_close(m, methods)}")
        if set(spec.draft.get(m, ())) & set(TRAINING_FREE_DRAFTS.values()):
            raise ScyllaError(f"lookup_tokens for {m}: its draft is prompt lookup, whose tree is the chain already")
    if AUTO in spec.top_k and spec.profile is None:
        raise ScyllaError("top_k 'auto' needs a device profile: run `scylla profile --quick --out PROFILE_DIR` and pass --profile PROFILE_DIR")
    if spec.profile is not None and not Path(spec.profile).is_dir():
        raise ScyllaError(f"profile: no profile folder at {spec.profile} (make one with `scylla profile --out DIR`)")
    if spec.data_dir is not None and not Path(spec.data_dir).is_dir():
        raise ScyllaError(f"data_dir: no such folder {spec.data_dir}")
    if spec.executor != "ray":
        for key in ("ray_address", "workers"):
            if getattr(spec, key) is not None:
                raise ScyllaError(f"{key}: only with executor ray (the executor is {spec.executor})")


def check_draft_kind(method: str, draft: str, kind: str) -> None:
    """A method of the registry runs drafts of its own kind (`kind`: the draft's method), so that
    what a report calls EAGLE-2 is an EAGLE-2 draft. The oracle stands in for any (tests), and a
    method named by the user runs whatever draft it is given."""
    if method not in KNOWN_METHODS or kind in (method, "oracle"):
        return
    raise ScyllaError(f"draft for {method}: {draft} is a draft of {LABELS.get(kind, kind)}, not of {LABELS[method]}: "
                      f"run it as method {kind}, or under a name of your own (--methods ar,mine --draft mine={draft})")


def _close(word: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
