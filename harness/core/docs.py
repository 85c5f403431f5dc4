"""The README's spec reference, generated from harness/core/spec.py so the two cannot drift (a test compares)."""

from __future__ import annotations

from harness.core import spec

SLURM_KEYS = ("partition", "account", "qos", "time_min", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb",
              "constraint", "array_throttle", "retries", "sbatch_extra")


def spec_reference_markdown() -> str:
    lines = ["## Spec reference", "",
             "Every key, its type, default and meaning (generated from `harness/core/spec.py` by "
             "`python -m harness.core.docs`; unknown keys are errors). Stage tables (`assets`, `tokenize`, `merge`, "
             "`finetune`, `infer`, `evaluate`, `report`) also take the Slurm keys `" + ", ".join(SLURM_KEYS) + "`.",
             "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in spec.reference():
        section, name = key.split(".", 1)
        if name in SLURM_KEYS and section != "assets":
            continue
        if name in SLURM_KEYS:
            key = "<stage>." + name
        lines.append(f"| `{key}` | {tp.replace('|', '/')} | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """`text` with its "## Spec reference" section (up to the next "## " heading) replaced by `section`,
    or `section` appended when there is none; everything around it is kept."""
    start = text.find("\n## Spec reference\n")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + 1)
    tail = text[end + 1:] if end >= 0 else ""
    return text[:start + 1] + section + ("\n" + tail if tail else "")


def update_readme(path: str = "README.md") -> None:
    text = open(path, encoding="utf-8").read()
    open(path, "w", encoding="utf-8").write(replace_section(text, spec_reference_markdown()))


if __name__ == "__main__":
    update_readme()
