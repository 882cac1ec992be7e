"""Training: the paper's schedule and loss, checkpoints, bit-exact resume, DDP, faults."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aiayn.io.checkpoint import CheckpointError, average_checkpoints, list_checkpoints, read_checkpoint
from aiayn.train.config import TrainConfig, load_config, parse_overrides
from aiayn.train.loss import label_smoothed_nll
from aiayn.train.schedule import inverse_sqrt_lr, paper_lr
from aiayn.train.trainer import Trainer, TrainingError

# a small, fast recipe for tests
FAST = {
    "model": {
        "preset": "tiny",
        "pre_norm": False,
        "d_model": 64,
        "d_ff": 128,
        "n_heads": 4,
        "n_encoder_layers": 1,
        "n_decoder_layers": 1,
        "dropout": 0.1,
    },
    "max_tokens": 400,
    "lr_schedule": "inverse_sqrt",
    "lr": 0.003,
    "warmup_steps": 20,
    "log_every": 1000,
    "validate_every": 0,
    "valid_bleu": False,
    "save_every": 10,
    "threads": 1,
}


def fast_config(**overrides) -> TrainConfig:
    values = {**FAST, **overrides}
    if "model" in overrides:
        values["model"] = {**FAST["model"], **overrides["model"]}
    return TrainConfig.from_dict(values)


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "aiayn", *map(str, args)], capture_output=True, text=True, **kw)


def cli_overrides(**overrides) -> list[str]:
    args = []
    for key, value in {**FAST, **overrides}.items():
        if key == "model":
            for k, v in {**FAST["model"], **overrides.get("model", {})}.items():
                if k != "preset":
                    args += [f"--model.{k}", str(v)]
        else:
            args += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


# ---------------------------------------------------------------- recipe
def test_paper_schedule_matches_equation_3():
    for step in (1, 10, 100, 3999, 4000, 4001, 10000, 100000):
        expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert paper_lr(step, 512, 4000) == pytest.approx(expected, rel=1e-12)
    assert paper_lr(4000, 512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)  # the peak, ≈ 7.0e-4
    assert paper_lr(4000, 512, 4000, scale=2.0) == pytest.approx(2 * 512**-0.5 * 4000**-0.5)
    assert inverse_sqrt_lr(50, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(100, 1e-3, 100) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(400, 1e-3, 100) == pytest.approx(5e-4)
    # the two forms agree when the peak is the paper's
    peak = paper_lr(4000, 512, 4000)
    for step in (1, 2000, 4000, 16000):
        assert inverse_sqrt_lr(step, peak, 4000) == pytest.approx(paper_lr(step, 512, 4000))


def test_budgeted_schedules_by_hand():
    from aiayn.train.schedule import cosine_lr, linear_lr

    for lr in (cosine_lr, linear_lr):
        assert lr(50, 1e-3, 100, 0.0) == pytest.approx(5e-4)  # warm-up
        assert lr(100, 1e-3, 100, 0.0, min_lr=1e-4) == pytest.approx(1e-3)
        assert lr(900, 1e-3, 100, 1.0, min_lr=1e-4) == pytest.approx(1e-4)
        assert lr(999, 1e-3, 100, 1.5, min_lr=1e-4) == pytest.approx(1e-4)  # past the budget: the floor
    assert cosine_lr(500, 1e-3, 100, 0.5, min_lr=1e-4) == pytest.approx(1e-4 + 0.45e-3)
    assert cosine_lr(500, 1e-3, 100, 0.25) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi / 4)))
    assert linear_lr(500, 1e-3, 100, 0.25, min_lr=1e-4) == pytest.approx(1e-4 + 0.75 * 0.9e-3)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_budgeted_schedules_reach_their_floor_at_the_end_of_the_budget(schedule, small_dataset, tmp_path, monkeypatch):
    # by updates: the trainer's progress is step / max_updates
    cfg = TrainConfig.from_dict(
        {"model": {"preset": "tiny"}, "lr_schedule": schedule, "lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 5, "max_updates": 40}
    )
    t = Trainer(cfg, small_dataset, tmp_path / "a", log=lambda *a: None, progress=False)
    assert t.lr(40) == pytest.approx(1e-5) and t.lr(20) > t.lr(30) > t.lr(40)
    # by the clock (max_time): progress is the share of the minutes spent, whichever is further
    cfg = TrainConfig.from_dict(
        {"model": {"preset": "tiny"}, "lr_schedule": schedule, "lr": 1e-3, "min_lr": 0.0, "warmup_steps": 5, "max_time": 10}
    )
    t = Trainer(cfg, small_dataset, tmp_path / "b", log=lambda *a: None, progress=False)
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    t._session_start, t.train_seconds = 1000.0, 240.0  # 4 minutes spent by an earlier session
    now[0] = 1000.0 + 60  # half of the 10 minutes in all
    assert t.lr(50) == pytest.approx(0.5e-3)
    now[0] = 1000.0 + 360
    assert t.lr(60) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=f"{schedule} decays over the budget"):
        Trainer(TrainConfig.from_dict({"model": {"preset": "tiny"}, "lr_schedule": schedule, "lr": 1e-3}), small_dataset, tmp_path / "c")


def test_resume_in_the_middle_of_a_linear_decay_with_a_moving_average_is_bit_exact(small_dataset, tmp_path):
    """Stopped (as by SIGTERM) half-way down the decay and resumed, a run ends with the weights, the
    moving average and the learning rates of an uninterrupted one; the checkpoint holds the average."""
    from aiayn.io.checkpoint import load_training_state

    def trainer(run, resume=False):
        cfg = fast_config(lr_schedule="linear", min_lr=0.0, max_updates=40, ema_decay=0.95, log_every=1)
        return Trainer(cfg, small_dataset, tmp_path / run, resume=resume, log=lambda *a: None, progress=False)

    trainer("whole").train()
    cut = trainer("cut")
    update = cut.update

    def update_then_stop(batches):
        if cut.step == 23:
            cut._signal = "SIGTERM"
        return update(batches)

    cut.update = update_then_stop
    cut.train()
    assert cut.stop_reason == "signal" and 20 < cut.step < 40
    resumed = trainer("cut", resume=True)
    resumed.train()
    assert resumed.step == 40
    name = "step-00000040"
    a, b = (load_file(tmp_path / run / "checkpoints" / f"{name}.safetensors") for run in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trained = [load_training_state(tmp_path / run / "checkpoints" / f"{name}.state.pt")["trained_weights"] for run in ("whole", "cut")]
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    assert any(not torch.equal(trained[0][k], a[k]) for k in a)  # the checkpoint is the average, not the last weights
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()] for run in ("whole", "cut")]
    lrs = [{e["tokens_seen"]: e["lr"] for e in log if e["type"] == "train"} for log in logs]
    assert lrs[0] == {k: v for k, v in lrs[1].items() if k in lrs[0]} and len(lrs[0]) == 40
    assert lrs[0][max(lrs[0])] == 0.0  # the last update (40 of 40) runs at the floor


def test_label_smoothed_loss_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.1, -1.0], [0.5, 0.5, 3.0, 0.0]])
    target = torch.tensor([0, 2])
    eps, V = 0.1, 4
    loss, nll = label_smoothed_nll(logits, target, eps)
    expected_loss = expected_nll = 0.0
    for row, y in zip(logits.tolist(), target.tolist()):
        z = sum(math.exp(v) for v in row)
        logp = [v - math.log(z) for v in row]
        expected_nll += -logp[y]
        # target distribution: (1 - eps) on y plus eps / V everywhere
        q = [eps / V + (1 - eps) * (k == y) for k in range(V)]
        expected_loss += -sum(qk * lk for qk, lk in zip(q, logp))
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert nll.item() == pytest.approx(expected_nll, rel=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.0])
def test_label_smoothed_gradient_is_p_minus_q(eps):
    """The fused loss's gradient equals autograd's through log_softmax (and gradcheck in float64),
    with smoothing and without (the language models' ε = 0, which skips the smoothing's passes)."""
    torch.manual_seed(0)
    logits = torch.randn(40, 25, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 25, (40,))
    assert torch.autograd.gradcheck(lambda x: label_smoothed_nll(x, target, eps)[0], (logits,))
    loss, _ = label_smoothed_nll(logits, target, eps)
    reference = torch.nn.functional.cross_entropy(logits, target, label_smoothing=eps, reduction="sum")
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    (ours,) = torch.autograd.grad(loss, logits)
    (theirs,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    half = logits.detach().bfloat16().requires_grad_()
    loss16, _ = label_smoothed_nll(half, target, eps)
    loss16.backward()
    assert loss16.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    rounded = half.detach().double().requires_grad_()
    (exact,) = torch.autograd.grad(label_smoothed_nll(rounded, target, eps)[0], rounded)
    torch.testing.assert_close(half.grad.double(), exact, rtol=2**-7, atol=1e-9)  # bf16's rounding of the fp32 gradient


@pytest.mark.parametrize("eps,with_bias", [(0.1, False), (0.0, True)])
def test_projection_and_loss_by_blocks_equal_the_projection_then_the_loss(monkeypatch, eps, with_bias):
    """projected_label_smoothed_nll (blocks of 7 rows, the last one short) gives the loss, the NLL and
    the gradients of F.linear followed by label_smoothed_nll: in float64 to 1e-12, without a graph
    too; a frozen weight gets no gradient; a scale on the loss scales the gradients."""
    from aiayn import runtime
    from aiayn.train.loss import projected_label_smoothed_nll

    monkeypatch.setattr(runtime, "loss_block_rows", lambda vocabulary, width, where: 7)
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(30, dtype=torch.float64, requires_grad=True) if with_bias else None
    target = torch.randint(0, 30, (40,))
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    loss, nll = label_smoothed_nll(torch.nn.functional.linear(hidden, weight, bias), target, eps)
    expected = torch.autograd.grad(3.0 * loss, leaves)
    ours_loss, ours_nll = projected_label_smoothed_nll(hidden, weight, bias, target, eps)
    assert not ours_nll.requires_grad
    torch.testing.assert_close((ours_loss, ours_nll), (loss, nll), rtol=1e-12, atol=0)
    for ours, theirs in zip(torch.autograd.grad(3.0 * ours_loss, leaves), expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(projected_label_smoothed_nll(hidden, weight, bias, target, eps), (loss, nll), rtol=1e-12, atol=0)
    frozen = weight.detach()
    ours_loss, _ = projected_label_smoothed_nll(hidden, frozen, bias, target, eps)
    ours_loss.backward()
    torch.testing.assert_close(hidden.grad, expected[0] / 3.0, rtol=1e-12, atol=1e-12)
    assert frozen.grad is None


def test_projection_and_loss_by_blocks_under_bf16_autocast(monkeypatch):
    """Under bf16 autocast the blocks' products run in bf16 and the softmax in fp32: loss and
    gradients within bf16's rounding of autocast's F.linear + label_smoothed_nll, in the leaves' dtypes."""
    from aiayn import runtime
    from aiayn.train.loss import projected_label_smoothed_nll

    monkeypatch.setattr(runtime, "loss_block_rows", lambda vocabulary, width, where: 16)
    torch.manual_seed(0)
    hidden = torch.randn(50, 32, requires_grad=True)
    weight = (0.3 * torch.randn(200, 32)).requires_grad_()
    target = torch.randint(0, 200, (50,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nll = label_smoothed_nll(torch.nn.functional.linear(hidden, weight), target, 0.1)
        expected = torch.autograd.grad(loss, (hidden, weight))
        ours_loss, ours_nll = projected_label_smoothed_nll(hidden, weight, None, target, 0.1)
        ours = torch.autograd.grad(ours_loss, (hidden, weight))
    assert ours_loss.dtype == torch.float32 and [g.dtype for g in ours] == [torch.float32, torch.float32]
    torch.testing.assert_close((ours_loss, ours_nll), (loss, nll), rtol=1e-3, atol=0)
    for mine, theirs in zip(ours, expected):
        scale = theirs.abs().max()
        torch.testing.assert_close(mine / scale, theirs / scale, rtol=0, atol=2**-7)


def test_config_from_yaml_and_overrides(tmp_path):
    overrides = parse_overrides(["--max-tokens", "2048", "--model.dropout", "0.3", "--adam-betas=[0.9, 0.997]", "--valid-bleu", "false"])
    cfg = load_config("base", overrides)
    assert cfg.max_tokens == 2048 and cfg.model == {"preset": "base", "dropout": 0.3}
    assert cfg.adam_betas == (0.9, 0.997) and cfg.valid_bleu is False
    assert cfg.warmup_steps == 4000 and cfg.adam_eps == 1e-9 and cfg.label_smoothing == 0.1
    path = tmp_path / "mine.yaml"
    path.write_text("model: {preset: tiny}\nmax_tokens: 100\n")
    assert load_config(str(path)).max_tokens == 100
    with pytest.raises(ValueError, match="unknown training config keys: max_tokenz"):
        load_config("base", {"max_tokenz": 1})
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        load_config("huge")


def test_a_budget_entry_applies_by_max_time_and_the_command_line_wins(tmp_path):
    from aiayn.train.config import config_budget

    path = tmp_path / "budgeted.yaml"
    path.write_text(
        "model: {preset: tiny, dropout: 0.0}\nlr: 0.003\nmax_tokens: 1024\n"
        "budgets:\n  - {minutes: 10, lr: 0.002}\n  - {minutes: 20, model: {d_model: 256, dropout: 0.1}, lr: 0.001}\n"
    )
    assert load_config(str(path)).lr == 0.003  # no max_time: no budget entry
    assert load_config(str(path), {"max_time": 9.9}).lr == 0.003
    ten = load_config(str(path), {"max_time": 10})
    assert ten.lr == 0.002 and ten.model == {"preset": "tiny", "dropout": 0.0} and ten.max_tokens == 1024
    thirty = load_config(str(path), {"max_time": 30})
    assert thirty.lr == 0.001 and thirty.model == {"preset": "tiny", "d_model": 256, "dropout": 0.1}
    mine = load_config(str(path), {"max_time": 30, "lr": 0.0005, "model": {"dropout": 0.3}})
    assert mine.lr == 0.0005 and mine.model == {"preset": "tiny", "d_model": 256, "dropout": 0.3}
    assert config_budget(str(path), 25) == {"minutes": 20, "model": {"d_model": 256, "dropout": 0.1}, "lr": 0.001}
    assert config_budget(str(path), 5) == {}
    assert "budgets" not in TrainConfig.to_dict(thirty)  # what a run saves is the resolved config: resume needs no budget
    # the shipped quickstart: the 3-minute recipe below 30 minutes, a wider model with dropout from 30
    assert load_config("quickstart", {"max_time": 3}).model == {"preset": "tiny", "dropout": 0.0}
    assert load_config("quickstart", {"max_time": 30}).model["d_model"] > 128
    # the shipped RNN: a schedule that needs no budget without one, the linear decay from 10 minutes
    assert load_config("rnnsearch-tiny").lr_schedule == "inverse_sqrt"
    assert load_config("rnnsearch-tiny", {"max_time": 30}).lr_schedule == "linear"


@pytest.mark.parametrize(
    "budgets, phrase",
    [
        ("budgets: {minutes: 10}", "expected a list"),
        ("budgets: [{lr: 0.1}]", r"budgets\[0\]: expected a mapping with minutes > 0"),
        ("budgets: [{minutes: 0, lr: 0.1}]", r"budgets\[0\]: expected a mapping with minutes > 0"),
        (
            "budgets: [{minutes: 5, lr: 0.1}, {minutes: 10, lrr: 0.1}]",
            r"budgets\[1\] \(from 10 minutes\): unknown training config keys: lrr",
        ),
        ("budgets: [{minutes: 5, model: {d_model: 130}}]", r"budgets\[0\].*not divisible"),
        ("budgets: [{minutes: 5, max_time: 3}]", "may not set max_time"),
        ("budgets: [{minutes: 5, lr: 0.1}, {minutes: 5, lr: 0.2}]", "same minutes"),
    ],
)
def test_a_bad_budget_entry_is_refused_even_when_it_would_not_apply(tmp_path, budgets, phrase):
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: {{preset: tiny}}\n{budgets}\n")
    with pytest.raises(ValueError, match=phrase):
        load_config(str(path))


def test_help_config_lists_every_key_and_the_presets_but_no_code(capsys):
    import dataclasses

    from aiayn.cli import main
    from aiayn.models import PRESETS

    main(["train", "--help-config"])
    out = capsys.readouterr().out
    assert all(f"    {f.name}: " in out for f in dataclasses.fields(TrainConfig))
    assert all(name in out.splitlines()[-1] for name in PRESETS)
    assert "def " not in out and "return" not in out


# ---------------------------------------------------------------- runs
def train(data, out, resume=False, **overrides):
    return Trainer(fast_config(**overrides), data, out, resume=resume, log=lambda *a: None, progress=False).train()


def test_a_run_is_self_contained(small_dataset, tmp_path):
    summary = train(small_dataset, tmp_path / "run", max_updates=20, validate_every=10, valid_bleu=True, valid_max_sentences=20)
    assert summary["updates"] == 20 and summary["reason"] == "max_updates"
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "log.jsonl", "checkpoints", "curves.png", "tensorboard"}
    assert [s for s, _ in list_checkpoints(run)] == [10, 20]
    assert (run / "checkpoints" / "best.safetensors").is_file()
    # the checkpoint alone carries the model config and the vocabulary
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(run / "checkpoints" / "step-00000020.safetensors", moved)
    ckpt = read_checkpoint(moved)
    assert ckpt.config.d_model == 64 and ckpt.src_tokenizer.vocab_size == 1000
    import hashlib

    assert ckpt.src_tokenizer.sha256 == hashlib.sha256((small_dataset / "spm.model").read_bytes()).hexdigest()
    model = ckpt.build()
    assert model.output_proj.weight is model.src_embed.weight  # tying survives the round trip


def test_the_logged_speed_leaves_out_the_time_spent_saving(small_dataset, tmp_path, monkeypatch):
    # a clock that moves 1 s per update and 50 s per checkpoint: the rate of each logged window of
    # 4 updates is its tokens over those 4 seconds, whatever the saves in between took
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    update, save = Trainer.update, Trainer.save

    def timed_update(self, batches):
        now[0] += 1.0
        return update(self, batches)

    def slow_save(self):
        now[0] += 50.0
        return save(self)

    monkeypatch.setattr(Trainer, "update", timed_update)
    monkeypatch.setattr(Trainer, "save", slow_save)
    train(small_dataset, tmp_path / "run", max_updates=12, log_every=4, save_every=2)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    windows = [e for e in logged if e.get("type") == "train" and e["step"] in (4, 8, 12)]
    assert [e["step"] for e in windows] == [4, 8, 12]
    for before, entry in zip(windows, windows[1:]):
        assert entry["tokens_per_s"] == pytest.approx((entry["tokens_seen"] - before["tokens_seen"]) / 4.0, rel=1e-3)


def test_existing_run_needs_resume(small_dataset, tmp_path):
    train(small_dataset, tmp_path / "run", max_updates=10)
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_dataset, tmp_path / "run", max_updates=10)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(small_dataset, tmp_path / "empty", resume=True, max_updates=10)


@pytest.mark.parametrize("started", ["fp32", "bf16"])
def test_precision_auto_resumes_in_the_runs_own_precision(small_dataset, tmp_path, started):
    """A run started in either precision and resumed with `auto` (which is bf16 or fp32 by the CPU)
    continues in the precision it was trained in, so that a resumed run stays bit-exact."""
    train(small_dataset, tmp_path / "run", max_updates=2, save_every=2, precision=started)
    trainer = Trainer(
        fast_config(max_updates=4, precision="auto"), small_dataset, tmp_path / "run", resume=True, log=lambda *a: None, progress=False
    )
    assert trainer.precision == started


def test_resume_keeps_the_runs_model_when_a_preset_changes(small_dataset, tmp_path, monkeypatch):
    """--resume rebuilds the model its checkpoint records: a preset redefined since the run began
    does not change it; a model section that asks for another model is refused."""
    from aiayn.models import presets

    train(small_dataset, tmp_path / "run", max_updates=4, save_every=2)
    tiny = presets.PRESETS["tiny"]
    monkeypatch.setitem(presets.PRESETS, "tiny", (tiny[0], {**tiny[1], "activation": "gelu"}))
    summary = train(small_dataset, tmp_path / "run", resume=True, max_updates=6, save_every=2)
    assert summary["updates"] == 6
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006.safetensors").config.activation == "relu"
    with pytest.raises(CheckpointError, match="another model config"):
        train(small_dataset, tmp_path / "run", resume=True, max_updates=8, model={"d_ff": 96})


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_exact(small_dataset, tmp_path):
    """A run killed with SIGKILL part way and resumed ends with exactly the weights of an uninterrupted run."""
    args = ["train", "--data", small_dataset, "--config", "tiny", *cli_overrides(max_updates=40, save_every=10)]
    whole = cli(*args, "--out", tmp_path / "whole", timeout=300)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiayn", *map(str, args), "--out", str(tmp_path / "cut")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "cut" / "checkpoints" / "step-00000020.state.pt"
    deadline = time.time() + 120
    while not state.is_file() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.is_file() and not (tmp_path / "cut" / "checkpoints" / "step-00000040.safetensors").exists()
    resumed = cli(*args, "--out", tmp_path / "cut", "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "whole" / "checkpoints" / "step-00000040.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "step-00000040.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(small_dataset, tmp_path):
    """2 CPU processes (gloo), each with one batch per update, give the weights of 1 process with 2 batches per update."""
    from aiayn.data import ParallelDataset, TokenBucketSampler

    ds = ParallelDataset(small_dataset)
    max_tokens = next(
        m for m in range(400, 600) if len(TokenBucketSampler(ds.src_lengths, ds.tgt_lengths, m, seed=1).epoch_batches(0)) % 2 == 0
    )
    common = [
        "--data",
        small_dataset,
        "--config",
        "tiny",
        *cli_overrides(max_updates=4, save_every=4, max_tokens=max_tokens, model={"dropout": 0.0}),
    ]
    one = cli("train", *common, "--update-freq", 2, "--out", tmp_path / "one", timeout=300)
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "aiayn",
            "train",
            *map(str, common),
            "--update-freq",
            "1",
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "checkpoints" / "step-00000004.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "step-00000004.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"\nmax |one process - two processes| = {worst:.2e}")
    assert worst <= 1e-5


def worst_difference(a: dict, b: dict) -> float:
    """The largest relative difference (by norm) between the tensors of two checkpoints, leaving out
    the attention key biases. Their true gradient is 0 (a key bias shifts all scores of a query
    alike), so Adam blows their rounding noise up to steps of ~lr, different in any two runs whose
    arithmetic rounds differently (compiled against eager)."""
    d = FAST["model"]["d_model"]
    worst = 0.0
    for k in a:
        x, y = a[k], b[k]
        if k.endswith(("self_attn.qkv_proj.bias", "cross_attn.kv_proj.bias")):
            start = d if k.endswith("qkv_proj.bias") else 0  # [q | k | v] and [k | v]
            x, y = torch.cat([x[:start], x[start + d :]]), torch.cat([y[:start], y[start + d :]])
        worst = max(worst, ((x - y).norm() / x.norm()).item())
    return worst


@pytest.mark.slow
def test_torchrun_with_compiled_layers_equals_eager(small_dataset, tmp_path):
    """DDP (2 CPU processes, gloo) over compiled layers gives the weights of the same run eager."""
    common = [
        "train",
        "--data",
        small_dataset,
        "--config",
        "tiny",
        *cli_overrides(max_updates=3, save_every=3, precision="fp32", model={"dropout": 0.0}),
    ]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2", "--standalone", "-m", "aiayn"]
    for name, extra in (("eager", []), ("compiled", ["--compile", "true"])):
        run = subprocess.run(
            [*torchrun, *map(str, common), *extra, "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, run.stderr[-3000:]
    a = load_file(tmp_path / "eager" / "checkpoints" / "step-00000003.safetensors")
    b = load_file(tmp_path / "compiled" / "checkpoints" / "step-00000003.safetensors")
    assert worst_difference(a, b) <= 1e-4


@pytest.mark.slow
def test_compiled_layers_train_like_eager(small_dataset, tmp_path):
    """`compile: true` (each layer compiled, dynamic shapes) gives an eager run's weights, compiles each
    kind of layer once for token-bucket batches of every shape, and leaves validation's decoding eager."""
    import torch._dynamo

    # fp32: bf16 autocast (the default where the CPU has bf16 units) rounds compiled and eager products differently
    settings = dict(
        max_updates=6, save_every=6, validate_every=6, valid_bleu=True, valid_max_sentences=4, precision="fp32", model={"dropout": 0.0}
    )
    train(small_dataset, tmp_path / "eager", **settings)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        summary = train(small_dataset, tmp_path / "compiled", compile=True, **settings)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()  # no compiled state carries into later tests
    assert summary["updates"] == 6
    # one graph per kind of layer (encoder, decoder) and layout (packed, or a batch without padding);
    # validation's teacher-forced loss and greedy decoding (eval mode, a KV cache) would add more
    assert 2 <= graphs <= 4, f"{graphs} graphs: the layers were recompiled for new shapes"
    a = load_file(tmp_path / "eager" / "checkpoints" / "step-00000006.safetensors")
    b = load_file(tmp_path / "compiled" / "checkpoints" / "step-00000006.safetensors")
    assert a.keys() == b.keys()  # compiling leaves the state-dict keys alone
    worst = worst_difference(a, b)
    print(f"\nworst relative difference, compiled against eager: {worst:.2e}")
    assert worst <= 1e-4, worst


def test_nan_loss_is_skipped_and_counted(small_dataset, tmp_path, monkeypatch):
    from aiayn.tasks.translation import LossModel

    calls = {"n": 0}
    original = LossModel.forward

    def inject(self, *batch):  # the third batch's loss is NaN
        calls["n"] += 1
        loss, nll = original(self, *batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), nll

    monkeypatch.setattr(LossModel, "forward", inject)
    summary = train(small_dataset, tmp_path / "run", max_updates=6)
    assert summary["nonfinite"] == 1 and summary["updates"] == 6
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000006.state.pt", weights_only=True)
    assert state["nonfinite_total"] == 1
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000006.safetensors")
    assert all(torch.isfinite(t).all() for t in ckpt.tensors.values())


def test_nan_losses_in_a_row_stop_with_a_clear_message(small_dataset, tmp_path, monkeypatch):
    from aiayn.tasks.translation import LossModel

    original = LossModel.forward
    monkeypatch.setattr(LossModel, "forward", lambda self, *batch: (original(self, *batch)[0] * float("nan"), original(self, *batch)[1]))
    with pytest.raises(TrainingError, match="5 non-finite losses in a row at update 1: training has diverged"):
        train(small_dataset, tmp_path / "run", max_updates=10)


def test_full_disk_keeps_the_previous_checkpoint(small_dataset, tmp_path, monkeypatch):
    import safetensors.torch

    train(small_dataset, tmp_path / "run", max_updates=10)
    before = (tmp_path / "run" / "checkpoints" / "step-00000010.safetensors").read_bytes()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(
        CheckpointError,
        match=r"could not write .*step-00000020\.safetensors: No space left on device \(is the disk full\?\); the previous checkpoint is intact",
    ):
        train(small_dataset, tmp_path / "run", resume=True, max_updates=20)
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "step-00000010.safetensors").read_bytes() == before
    assert not (ckpts / "step-00000020.safetensors").exists()
    assert not [p for p in ckpts.iterdir() if ".tmp-" in p.name]  # no half-written file left


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(small_dataset, tmp_path):
    args = [
        "train",
        "--data",
        small_dataset,
        "--config",
        "tiny",
        *cli_overrides(max_updates=100000, save_every=100000),
        "--out",
        tmp_path / "run",
    ]
    proc = subprocess.Popen([sys.executable, "-m", "aiayn", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and log.stat().st_size) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by a signal" in out and "SIGTERM" in out + err
    steps = list_checkpoints(tmp_path / "run")
    assert len(steps) == 1 and steps[0][0] > 0
    resumed = cli("train", "--data", small_dataset, "--out", tmp_path / "run", "--resume", "--max-updates", steps[0][0] + 2, timeout=120)
    assert resumed.returncode == 0, resumed.stderr


# ---------------------------------------------------------------- checkpoints
def test_average_is_the_elementwise_mean(small_dataset, tmp_path):
    train(small_dataset, tmp_path / "run", max_updates=30)
    paths = [p for _, p in list_checkpoints(tmp_path / "run")]
    assert len(paths) == 3
    average_checkpoints(paths, tmp_path / "avg.safetensors")
    tensors = [load_file(p) for p in paths]
    avg = load_file(tmp_path / "avg.safetensors")
    for k in avg:
        mean = ((tensors[0][k].double() + tensors[1][k].double() + tensors[2][k].double()) / 3).float()
        assert torch.equal(avg[k], mean), k
    result = cli("average", tmp_path / "run", "--last", 2, "--out", tmp_path / "avg2.safetensors")
    assert result.returncode == 0, result.stderr
    avg2 = load_file(tmp_path / "avg2.safetensors")
    k = "encoder_layers.0.ffn.w1.weight"
    assert torch.equal(avg2[k], ((tensors[1][k].double() + tensors[2][k].double()) / 2).float())


def test_truncated_and_foreign_checkpoints_give_clear_errors(small_dataset, tmp_path):
    from safetensors.torch import save_file

    train(small_dataset, tmp_path / "run", max_updates=10)
    good = tmp_path / "run" / "checkpoints" / "step-00000010.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, damaged or of another format"):
        read_checkpoint(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not an aiayn checkpoint.*import-hf"):
        read_checkpoint(foreign)
    pickle = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, pickle)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(pickle)
    with pytest.raises(CheckpointError, match="foreign.safetensors is not an aiayn checkpoint"):
        average_checkpoints([foreign, good], tmp_path / "x.safetensors")
    # and through the command line: a message, not a traceback
    result = cli("translate", "--model", truncated, "--input", os.devnull)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "truncated" in result.stderr
    state = tmp_path / "run" / "checkpoints" / "step-00000010.state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable training state"):
        train(small_dataset, tmp_path / "run", resume=True, max_updates=20)


def test_init_from_refuses_another_vocabulary(small_dataset, tmp_path, shipped):
    from aiayn.data import PrepareOptions, prepare

    train(small_dataset, tmp_path / "run", max_updates=10)
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000010.safetensors"
    other = tmp_path / "other-data"
    prepare({"train": shipped["train"]}, other, PrepareOptions(vocab_size=900, workers=1, progress=False), log=lambda *a: None)
    with pytest.raises(CheckpointError, match="vocabulary differs from the dataset's"):
        Trainer(fast_config(max_updates=5), other, tmp_path / "ft", init_from=ckpt, log=lambda *a: None)
    # the same vocabulary: fine-tuning starts from the weights with a fresh optimizer
    trainer = Trainer(
        fast_config(max_updates=5, model={"dropout": 0.2}),
        small_dataset,
        tmp_path / "ft",
        init_from=ckpt,
        log=lambda *a: None,
        progress=False,
    )
    start = load_file(ckpt)
    assert torch.equal(trainer.model.state_dict()["encoder_layers.0.ffn.w1.weight"], start["encoder_layers.0.ffn.w1.weight"])
    assert trainer.model_config.dropout == 0.2 and trainer.step == 0
    trainer.train()


@pytest.mark.slow
def test_memory_does_not_creep(small_dataset, tmp_path):
    """Resident memory is flat (within 10%) between update 100 and update 1,000 of a tiny run, in fp32.
    (bf16 on a CPU holds oneDNN's kernels for each new batch shape: on a Zen 5 EPYC the same run
    grew from 1,110 MiB at update 100 to 1,265 at 500 and then stayed within 2 MiB up to 2,500.)"""
    rss = {}

    def rss_now():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    original = Trainer.update

    def update(self, batches):
        out = original(self, batches)
        if self.step in (100, 1000):
            rss[self.step] = rss_now()
        return out

    Trainer.update = update
    try:
        train(small_dataset, tmp_path / "run", max_updates=1000, save_every=250, log_every=50, precision="fp32")
    finally:
        Trainer.update = original
    growth = rss[1000] / rss[100]
    print(f"\nRSS at update 100: {rss[100] / 2**20:.1f} MiB, at 1000: {rss[1000] / 2**20:.1f} MiB ({(growth - 1) * 100:+.1f}%)")
    assert growth < 1.10


def test_the_quickstart_cites_what_longer_budgets_reached():
    from aiayn.quickstart import budget_lines

    record = {
        "machine": {"cpu": "Some CPU", "threads": 2, "flags": ["fma", "avx2", "avx512f"]},
        "date": "2026-12-03 14:00",
        "test_sentences": 1000,
        "rows": [
            {"key": "aiayn", "minutes": 3, "bleu": 19.04},
            {"key": "hf", "minutes": 3, "bleu": 5.0},
            {"key": "aiayn", "minutes": 30, "bleu": 31.2},
            {"key": "aiayn", "minutes": 10, "bleu": 25.5},
        ],
    }
    lines = "\n".join(budget_lines(3, record))
    assert "test BLEU 19.0 after 3, 25.5 after 10, 31.2 after 30 minutes" in lines
    assert "2-thread Some CPU with AVX-512 (2026-12-03, 1,000 test verses," in lines
    assert "aiayn quickstart --minutes 10 " in lines
    assert "quickstart --minutes" not in "\n".join(budget_lines(30, record))
    assert budget_lines(3, {**record, "rows": [record["rows"][1]]}) == []
    # a budget rerun later, on another machine, is cited with its own date and machine
    other = {"cpu": "Other CPU", "threads": 2, "flags": ["avx2"]}
    rerun = {
        **record,
        "rows": [r for r in record["rows"] if r["minutes"] != 30]
        + [{"key": "aiayn", "minutes": 30, "bleu": 30.9, "date": "2026-12-06 05:00", "machine": other}],
    }
    lines = "\n".join(budget_lines(3, rerun))
    assert "19.0 after 3, 25.5 after 10 minutes on a 2-thread Some CPU with AVX-512 (2026-12-03);" in lines
    assert "30.9 after 30 minutes on a 2-thread Other CPU with AVX2 (2026-12-06);" in lines
    assert "aiayn quickstart --minutes 10 " in lines
    # the figures benchmarks/budget_curve.py measured ship with the package
    shipped = "\n".join(budget_lines(3))
    assert "benchmarks/budget_curve.py" in shipped and "after 30 minutes" in shipped


@pytest.mark.slow
def test_the_quickstart_runs_end_to_end_and_keeps_an_earlier_run(tmp_path):
    from aiayn.quickstart import quickstart

    lines = []
    result = quickstart(tmp_path / "qs", minutes=0.05, test_sentences=3, log=lines.append)
    text = "\n".join(lines)
    assert 0.0 <= result["bleu"] <= 100.0 and result["chrf"] >= 0.0
    assert "this machine:" in text and "tokens/s" in text and text.count("AIAYN ") == 3
    assert (tmp_path / "qs" / "attention.png").stat().st_size > 0
    assert list_checkpoints(tmp_path / "qs" / "run")
    with pytest.raises(FileExistsError, match="already holds a run"):
        quickstart(tmp_path / "qs", minutes=0.05, test_sentences=3, log=lines.append)
