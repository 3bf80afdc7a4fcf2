"""lm-evaluation-harness on an exported model, offline: a local multiple-choice task the test writes."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from kfm.model import Transformer
from kfm.train.cli.evaluate_lm import EvalJob, evaluate
from kfm.train.hf.export import export_model
from tests.helpers import random_model, tiny_cfg

QUESTIONS = [
    ("대한민국의 수도는?", ["서울", "부산", "대구"], 0),
    ("한글을 창제한 사람은?", ["이순신", "세종대왕", "장영실"], 1),
    ("김치찌개에 넣는 것은?", ["두부", "초콜릿", "우유"], 0),
    ("하늘의 색은?", ["초록", "파랑", "보라"], 1),
    ("Which number is larger?", ["two", "ten", "one"], 1),
    ("모든 국민은 법 앞에", ["평등하다", "다르다", "없다"], 0),
    ("오늘 날씨가 맑아서", ["산책을 나갔다", "잠을 잤다", "비가 왔다"], 0),
    ("학생들은 도서관에서", ["수영을 했다", "공부를 했다", "요리를 했다"], 1),
]
TASK = """task: ko_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "질문: {{{{question}}}}\\n답:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def expected_accuracy(model: Transformer, tok) -> float:
    """The harness's rule, by hand: the choice whose continuation ' <choice>' has the highest summed log-prob."""
    right = 0
    for question, choices, answer in QUESTIONS:
        context = f"질문: {question}\n답:"
        scores = []
        for choice in choices:
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
            cont = whole[len(ctx):]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = model(ids[:, :-1]).log_softmax(-1)[0, -len(cont):]
            scores.append(logp.gather(1, torch.tensor(cont)[:, None]).sum().item())
        right += max(range(len(choices)), key=scores.__getitem__) == answer
    return right / len(QUESTIONS)


def test_lm_eval_runs_a_local_korean_task_on_the_export(tiny_tokenizer, tmp_path):
    cfg = tiny_cfg()
    model = random_model(cfg, seed=5)
    out = export_model(model, cfg, tiny_tokenizer, tmp_path / "hf")
    (out / "README.md").write_text("# model\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tasks / "ko_tiny.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}, ensure_ascii=False) + "\n"
                            for q, c, a in QUESTIONS))
    (tasks / "ko_tiny_choice.yaml").write_text(TASK.format(data=data))
    job = EvalJob(run_dir=str(tmp_path), hf_dir=str(out), tasks=["ko_tiny_choice"], include_path=str(tasks),
                  batch_size=4, wandb_mode="disabled")
    results = evaluate(job)
    acc = results["ko_tiny_choice"]["acc"]
    assert acc == pytest.approx(expected_accuracy(model, AutoTokenizer.from_pretrained(str(out))), abs=1e-9)
    written = json.loads((out / "eval_results.json").read_text())
    assert written["results"]["ko_tiny_choice"]["acc"] == acc
    assert f"| ko_tiny_choice | acc | {acc:.4f} |" in (out / "README.md").read_text()

    with pytest.raises(ValueError, match=r"unknown lm-eval tasks \['no_such_task'\]"):
        evaluate(EvalJob(run_dir=str(tmp_path), hf_dir=str(out), tasks=["no_such_task"], wandb_mode="disabled"))
    with pytest.raises(FileNotFoundError, match="holds no exported model: run `python -m kfm.train.cli.export_hf` first"):
        evaluate(EvalJob(run_dir=str(tmp_path), hf_dir=str(tmp_path / "nothing"), tasks=["ko_tiny_choice"]))


def test_eval_results_go_to_wandb(tmp_path, monkeypatch):
    import wandb

    from kfm.train.cli.evaluate_lm import log_to_wandb

    logged, inits = {}, {}

    class FakeRun:
        def log(self, data):
            logged.update(data)

        def finish(self):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kwargs: inits.update(kwargs) or FakeRun())
    job = EvalJob(run_dir=str(tmp_path / "demo"), tasks=["kobest_copa"], wandb_mode="offline")
    log_to_wandb(job, {"kobest_copa": {"acc": 0.5, "acc_stderr": 0.01}})
    assert logged == {"eval/kobest_copa/acc": 0.5, "eval/kobest_copa/acc_stderr": 0.01}
    assert inits["job_type"] == "eval" and inits["name"] == "demo-eval" and inits["mode"] == "offline"


def test_the_eval_table_is_replaced_and_the_provenance_section_kept(tmp_path):
    from kfm.train.cli.evaluate_lm import add_to_model_card
    from kfm.train.provenance.report import Report, update_model_card

    card = tmp_path / "README.md"
    card.write_text("# model\n\n## Evaluation\n\n- validation loss\n")
    add_to_model_card(card, {"kobest_boolq": {"acc": 0.5}}, None)
    update_model_card(card, Report(hf_dir="hf", run_dir="run", verdict="VERIFIED: trained from scratch"))
    add_to_model_card(card, {"kobest_boolq": {"acc": 0.75}}, 8)
    text = card.read_text()
    assert text.count("## lm-evaluation-harness") == 1 and "| kobest_boolq | acc | 0.7500 |" in text
    assert "0.5000" not in text and text.count("## Provenance") == 1 and "- validation loss" in text
    assert text.index("## lm-evaluation-harness") < text.index("## Provenance")
