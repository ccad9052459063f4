"""Where a new draft starts: built on an fp32 view of the target, its head and norms copied or
scaled from the target's, so a CPU-sized budget trains the draft's body, not its scale."""

from types import SimpleNamespace

import torch


def fp32_view(target):
    """What the draft is built on: the target's frozen embedding and head in fp32, so the draft's
    weights (and Adam's moments) are fp32 whatever precision the target runs in."""
    if target.dtype == torch.float32:
        return target
    embed = torch.nn.Embedding.from_pretrained(target.embed.weight.detach().float(), freeze=True)
    head = torch.nn.Linear(target.lm_head.in_features, target.lm_head.out_features,
                           bias=target.lm_head.bias is not None).to(target.device)
    head.weight = torch.nn.Parameter(target.lm_head.weight.detach().float(), requires_grad=False)
    if head.bias is not None:
        head.bias = torch.nn.Parameter(target.lm_head.bias.detach().float(), requires_grad=False)
    return SimpleNamespace(model=target.model, info=target.info, device=target.device, dtype=torch.float32,
                           embed=embed.to(target.device), lm_head=head, compiled=False)  # training never compiles


def _final_norm_weight(target) -> torch.Tensor | None:
    norm = getattr(target.decoder, "norm", None)  # architectures without a final RMSNorm weight have none
    weight = getattr(norm, "weight", None)
    return weight.detach().float() if weight is not None else None


@torch.no_grad()
def init_head_from_target(draft, target) -> None:
    """Start EAGLE-3's own head where EAGLE-2 and Scylla start theirs: the target's LM head
    (its rows for the draft vocabulary) behind the target's final norm weights. It is still
    trained; at CPU-sized budgets a head learned from scratch would cost most of the budget
    before the comparison is about the drafts' bodies."""
    draft.lm_head.weight.copy_(target.lm_head.weight[draft.draft_token_ids()].float())
    weight = _final_norm_weight(target)
    if weight is not None:
        draft.norm.weight.copy_(weight)


@torch.no_grad()
def init_scylla_norm(draft, target) -> None:
    """Scylla's pre-head norm starts as the identity on its regression target. The draft regresses
    onto the target's post-norm hidden state h = g * x / rms(x), whose RMS is about rms(g)
    (1.83 on SmolLM2-135M); a unit norm weight would hand the head logits at about half scale,
    flattening the scores that rank the tree, and few optimizer steps could not undo it."""
    weight = _final_norm_weight(target)
    if weight is not None:
        draft.norm.weight.fill_(float(weight.pow(2).mean().sqrt()))
