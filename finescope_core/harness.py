"""An adapter to EleutherAI's lm-evaluation-harness: run its tasks on our model folders, our eval sets among them.

Every eval domain's ``mc.parquet`` is also offered to the harness as a multiple-choice task named
``finescope_<domain>_mc`` (written as a task YAML over a JSONL copy of the items), so the harness's own scoring can be
set beside ours. Other task names are the harness's; their data must be reachable (a hub or a local cache).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from finescope_core import storage
from finescope_core.formats import MC_FILE

TASK_PREFIX = "finescope_"


def eval_set_task_name(domain: str) -> str:
    return f"{TASK_PREFIX}{domain}_mc"


def write_eval_set_tasks(eval_uri: str, domains: list[str], folder: Path) -> list[str]:
    """Task YAMLs (and their JSONL data) for the domains' multiple-choice eval sets; returns the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for domain in domains:
        table = storage.read_parquet(storage.join(eval_uri, domain, MC_FILE), ["context", "choices", "answer"])
        data = folder / f"{domain}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
        name = eval_set_task_name(domain)
        task = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "answer",
            "target_delimiter": "",  # our choices carry their own leading space
            "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}
                            for metric in ("acc", "acc_norm")],
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
        names.append(name)
    return names


def run_harness(model_dir: str | Path, tasks: list[str], eval_uri: str, domains: list[str], limit: int | None,
                batch_size: int, device: str) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lm-evaluation-harness for one model folder."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ModuleNotFoundError:
        raise ModuleNotFoundError("eval.harness_tasks needs lm-evaluation-harness: pip install lm_eval") from None
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        ours = [d for d in domains if eval_set_task_name(d) in tasks]
        write_eval_set_tasks(eval_uri, ours, Path(scratch))
        manager = TaskManager(include_path=scratch)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ValueError(f"eval.harness_tasks: unknown task(s) {unknown}; ours are "
                             f"{[eval_set_task_name(d) for d in domains]}, the rest come from lm_eval's task list")
        model = HFLM(pretrained=str(model_dir), device=device, batch_size=batch_size, dtype="float32")
        results = lm_eval.simple_evaluate(model=model, tasks=tasks, limit=limit, task_manager=manager,
                                          log_samples=False, bootstrap_iters=0)
    return {task: _numbers(metrics) for task, metrics in results["results"].items()}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of one task, keyed without the harness's ',none' filter suffix."""
    return {key.split(",")[0]: float(value) for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and "stderr" not in key}
