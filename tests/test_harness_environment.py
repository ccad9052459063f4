"""The sweep reads the project's git state without writing to the user's repository."""

import os
import subprocess

from harness.environment import git_commit


def test_git_commit_leaves_the_index_alone(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    index = tmp_path / ".git" / "index"
    # A stale stat entry: a plain `git status` would refresh the index, taking .git/index.lock
    # in a repository the user may be committing in at that moment.
    os.utime(tmp_path / "a.txt", (1, 1))
    before = index.read_bytes(), index.stat().st_mtime_ns
    assert git_commit(tmp_path).endswith("-dirty") is False
    assert (index.read_bytes(), index.stat().st_mtime_ns) == before
    subprocess.run(["git", "-C", str(tmp_path), "status", "--porcelain"], check=True, capture_output=True)
    assert index.read_bytes() != before[0]  # the plain status does rewrite it: the test can see the lock
