"""search.lr.high=auto: the rule that turns an lr_find curve into a range (by hand-computed
values), the space it makes (each strategy draws from its own range), the sweep that finds the
ranges once and reuses them on resume (lr_find's calls counted), and the one-line fallback."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from helpers.processes import with_tests_on_path
from mlflow.tracking import MlflowClient

from sweeper.commands.sweeping import _begin
from sweeper.config import ConfigError
from sweeper.sweep import lr_anchor
from sweeper.sweep.lr_anchor import ANCHOR_ATTR, anchor_plan, recorded_plan
from sweeper.sweep.lr_anchor_rule import AnchorRule, anchored_range, rule_from
from sweeper.sweep.plan import plan_sweep

NUM_IT = 100
LRS = [1e-7 * (10 / 1e-7) ** (i / NUM_IT) for i in range(NUM_IT)]  # lr_find's lrs, fastai's defaults


def bowl(lowest_at: float) -> list[float]:
    """A loss that falls from 2.0 (lr 1e-5) to 0.5 at `lowest_at` (linear in log lr), then rises."""
    losses = []
    for lr in LRS:
        if lr <= 1e-5:
            losses.append(2.0)
        elif lr <= lowest_at:
            losses.append(2.0 - 1.5 * math.log(lr / 1e-5) / math.log(lowest_at / 1e-5))
        else:
            losses.append(0.5 + 3 * math.log10(lr / lowest_at))
    return losses


def lr_at_lowest(losses: list[float]) -> float:
    window = list(zip(LRS[NUM_IT // 10 : -5], losses[NUM_IT // 10 : -5]))
    return min(window, key=lambda point: point[1])[0]


SQRT10 = math.sqrt(10)


@pytest.mark.parametrize(
    "valley, steep, lowest_at, expected",
    [
        # valley and steep half a decade apart: widened to one decade about their log centre
        (1e-3, 3e-3, 1e-1, (math.sqrt(3e-6) / SQRT10, math.sqrt(3e-6) * SQRT10)),
        # steep above valley (as on the digits MLP): the same span, in either order
        (3e-3, 1e-3, 1e-1, (math.sqrt(3e-6) / SQRT10, math.sqrt(3e-6) * SQRT10)),
        # 1.7 decades apart: kept as they are
        (1e-3, 5e-2, 1e-0, (1e-3, 5e-2)),
        # three decades apart: two decades about the valley
        (1e-4, 1e-1, 1e-0, (1e-5, 1e-3)),
        # the loss is lowest inside the range: its top is clipped there
        (1e-3, 5e-2, 2e-2, (1e-3, "lowest")),
    ],
)
def test_the_range_is_valley_to_steep_widened_narrowed_and_clipped(valley, steep, lowest_at, expected):
    losses = bowl(lowest_at)
    found = anchored_range(LRS, losses, {"valley": valley, "steep": steep, "minimum": 0.0}, NUM_IT, AnchorRule())
    low, high = expected
    high = lr_at_lowest(losses) if high == "lowest" else high
    assert found.reason == ""
    assert found.range == pytest.approx((low, high), rel=1e-12)


def test_the_clip_can_be_turned_off():
    found = anchored_range(LRS, bowl(2e-2), {"valley": 1e-3, "steep": 5e-2}, NUM_IT, AnchorRule(clip=False))
    assert found.range == pytest.approx((1e-3, 5e-2), rel=1e-12)


def test_the_rule_on_fastais_own_suggestions_of_a_scripted_curve():
    from sweeper.training.lr_find import suggest

    losses = bowl(1e-2)
    suggestions = suggest(LRS, losses, NUM_IT)
    # on this bowl the loss falls steadily from 1e-5 to 1e-2: the valley about halfway down it,
    # and the steepest fall on the first step down
    found = anchored_range(LRS, losses, suggestions, NUM_IT, AnchorRule())
    low, high = sorted((suggestions["valley"], suggestions["steep"]))
    if math.log10(high / low) < 1:
        centre = math.sqrt(low * high)
        low, high = centre / SQRT10, centre * SQRT10
    assert found.range == pytest.approx((low, min(high, lr_at_lowest(losses))), rel=1e-12)


@pytest.mark.parametrize(
    "losses, suggestions, fragment",
    [
        (bowl(1e-2)[:20], {"valley": 1e-3, "steep": 1e-3}, "too few points (5) before the loss diverged"),
        (bowl(1e-2), {}, "too few points"),  # lr_find suggested nothing
        ([1.0 - 0.0001 * i for i in range(NUM_IT)], {"valley": 1e-3, "steep": 1e-3}, "the curve is flat (the loss falls by 0.8%"),
        ([1.0 + 0.01 * i for i in range(NUM_IT)], {"valley": 1e-3, "steep": 1e-3}, "the loss never falls"),
        (bowl(1e-4), {"valley": 1e-3, "steep": 3e-3}, "the lowest loss (lr 9.12e-05) lies below the range"),
    ],
)
def test_a_curve_without_a_usable_valley_gives_a_reason_and_no_range(losses, suggestions, fragment):
    found = anchored_range(LRS[: len(losses)], losses, suggestions, NUM_IT, AnchorRule())
    assert found.range is None
    assert fragment in found.reason


@pytest.mark.parametrize(
    "node, fragment",
    [
        ({"decade": 1}, "unknown key(s) ['decade']"),
        ({"decades": 0}, "anchor.decades: 0 must be a positive number"),
        ({"decades": 3}, "exceeds max_decades"),
        ({"clip": "yes"}, "clip: 'yes' must be true or false"),
        ({"start_lr": 10, "end_lr": 1}, "must lie below end_lr"),
        ({"min_drop": 1.5}, "a fraction below 1"),
        ({"num_it": 10.5}, "whole numbers"),
    ],
)
def test_rule_settings_mistakes_are_one_line(node, fragment):
    with pytest.raises(ConfigError) as raised:
        rule_from(node)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


# --- the sweep ----------------------------------------------------------------------------------


@pytest.fixture
def auto_sweep(workdir, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    return ["sweep.trainer=helpers.trainers.StandInTrainer", "tracking=none", "search=slices", "search.lr.high=auto", "sweep.n_trials=4"]


FLAT = {"lrs": LRS, "losses": [1.0] * NUM_IT, "suggestions": {"valley": 1e-3, "steep": 1e-3, "minimum": 1e-3}}


class CountingFinder:
    """Stands in for the lr_find process: scripted curves, and how often it was asked."""

    def __init__(self, flat: tuple[str, ...] = ()) -> None:
        self.calls, self.flat = [], flat

    def __call__(self, request):
        self.calls.append(request)
        curve = {"lrs": LRS, "losses": bowl(1e-1), "suggestions": {"valley": 1e-3, "steep": 3e-3, "minimum": 1e-2}}
        return {s: {**(FLAT if s in self.flat else curve), "seconds": 1.0, "plot": ""} for s in request["strategies"]}


def test_the_request_is_part_of_the_definition_and_shown():
    plan = plan_sweep(["search.lr.high=auto", "tracking=none"], validate=False)
    line = next(line for line in plan.space.describe() if line.startswith("lr.high:"))
    assert line.startswith("lr.high: auto (lr_find per strategy: decades=1.0, max_decades=2.0, clip=True")
    assert line.endswith("fallback log [0.0003, 0.03))")
    wider = plan_sweep(["search.lr.high=auto", "search.lr.anchor.decades=1.5", "tracking=none"], validate=False)
    assert wider.definition != plan.definition  # another rule is another sweep


def test_each_strategy_draws_from_its_own_range(auto_sweep, tmp_path):
    plan = plan_sweep(auto_sweep, validate=False)
    finder = CountingFinder(flat=("fastai",))
    anchored, record = anchor_plan(plan, None, tmp_path, find=finder, say=lambda line: None)
    lows = {"single": math.sqrt(3e-6) / SQRT10, "geometric": math.sqrt(3e-6) / SQRT10, "fastai": 3e-4}
    highs = {"single": math.sqrt(3e-6) * SQRT10, "geometric": math.sqrt(3e-6) * SQRT10, "fastai": 3e-2}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(60):
        overrides = dict(o.split("=", 1) for o in anchored.space.suggest(study.ask()))
        strategy, high = overrides["lr"], float(overrides["lr.high"])
        assert lows[strategy] * (1 - 1e-12) <= high < highs[strategy], (strategy, high)
        drawn.add(strategy)
    assert drawn == {"single", "fastai", "geometric"}
    # lr_find ran each strategy with its slice: geometric at the log-centre of the low_ratio range
    assert finder.calls[0]["strategies"]["geometric"] == [
        "lr=geometric",
        "lr.high=1.0",
        f"lr.low={math.sqrt(1e-3 * math.nextafter(0.5, 0))!r}",
    ]


def test_a_curve_without_a_valley_falls_back_in_one_line(auto_sweep, tmp_path):
    plan = plan_sweep(auto_sweep, validate=False)
    said = []
    anchored, record = anchor_plan(plan, None, tmp_path, find=CountingFinder(flat=("fastai",)), say=said.append)
    about_fastai = [line for line in said if "fastai" in line]
    assert about_fastai == [
        "  fastai: nothing usable: the curve is flat (the loss falls by 0.0%, less than min_drop=0.05); "
        "falling back to the configured range"
    ]
    assert anchored.space.high_by_strategy["fastai"].distribution == plan.space.high.distribution
    assert record["strategies"]["fastai"]["range"] is None


def test_a_resumed_sweep_and_its_workers_reuse_the_ranges_lr_find_is_not_run_again(auto_sweep, tmp_path, monkeypatch):
    finder = CountingFinder()
    monkeypatch.setattr(lr_anchor, "find_in_subprocess", finder)
    folder = tmp_path / "sweep"
    first, _, study, _ = _begin(plan_sweep(auto_sweep, validate=False), folder, [], fresh=False)
    assert len(finder.calls) == 1
    recorded = study.user_attrs[ANCHOR_ATTR]
    resumed, _, study_again, _ = _begin(plan_sweep(auto_sweep, validate=False), folder, [], fresh=False)
    assert len(finder.calls) == 1  # the resume read the record: lr_find did not run again
    assert study_again.user_attrs[ANCHOR_ATTR] == recorded
    assert resumed.space.describe() == first.space.describe()
    joined = recorded_plan(plan_sweep(auto_sweep, validate=False), study_again)  # a worker joining it
    assert joined.space.describe() == first.space.describe()
    assert len(finder.calls) == 1
    assert "lr.high.single: log [0.000547723, 0.00547723)" in study.user_attrs["space"]


def test_the_report_shows_the_ranges_and_lr_finds_cost_and_survives_a_damaged_record(auto_sweep, tmp_path):
    from sweeper.analysis.report import write_report

    plan = plan_sweep(auto_sweep, validate=False)
    _, record = anchor_plan(plan, None, tmp_path, find=CountingFinder(flat=("fastai",)), say=lambda line: None)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(ANCHOR_ATTR, record)
    text = write_report(study, tmp_path / "report").markdown
    assert f"lr_find ran once, before the first trial: {record['seconds']:.1f} s, next to 0.0 s of trials" in text
    assert "| single | 0.001 | 0.003 | 0.01 | [0.000548, 0.00548) |" in text  # valley, steep, minimum, the range
    assert "| fastai | 0.001 | 0.001 | 0.001 | fallback: the curve is flat" in text
    study.set_user_attr(ANCHOR_ATTR, {"strategies": {"single": 3}, "seconds": "soon"})
    assert "lr_find's record in the study cannot be read" in write_report(study, tmp_path / "damaged").markdown


def test_a_dry_run_shows_each_strategys_range_and_writes_nothing(auto_sweep, workdir, monkeypatch, capsys):
    from sweeper.cli import main

    finder = CountingFinder(flat=("fastai",))
    monkeypatch.setattr(lr_anchor, "find_in_subprocess", finder)
    assert main(["sweep", "--dry-run", *auto_sweep]) == 0
    out = capsys.readouterr().out
    assert len(finder.calls) == 1
    space = out[out.index("; space:") :]
    for strategy in ("single", "geometric"):
        assert f"lr.high.{strategy}: log [0.000547723, 0.00547723)" in space, out
    assert "lr.high.fastai: log [0.0003, 0.03)" in space, out  # the flat curve: the configured range
    assert "fastai: nothing usable: the curve is flat" in out
    assert list(workdir.iterdir()) == []


def test_a_worker_never_finds_ranges_itself(auto_sweep):
    plan = plan_sweep(auto_sweep, validate=False)
    study = optuna.create_study()
    with pytest.raises(ConfigError, match="has no lr ranges recorded yet; start"):
        recorded_plan(plan, study)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("search.lr.low_ratio=auto", "search.lr.low_ratio: auto has no meaning"),
        ("search.lr.anchor.fallback=null", "search.lr.anchor.fallback: search.lr.high=auto needs the range"),
    ],
)
def test_requests_that_cannot_be_anchored_are_refused(override, fragment):
    with pytest.raises(ConfigError) as raised:
        plan_sweep(["search.lr.high=auto", override, "tracking=none"], validate=False)
    assert fragment in str(raised.value)


@pytest.mark.slow
def test_a_real_sweep_finds_the_ranges_once_records_them_and_reports_the_cost(sweeper_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    args = ["sweep.trainer=helpers.trainers.StandInTrainer", "search=slices", "search.lr.high=auto", "search.lr.anchor.num_it=40"]
    first = sweeper_cli("sweep", *args, "sweep.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "lr_find: " in first.stdout and "once, before the first trial" in first.stdout
    again = sweeper_cli("sweep", *args, "sweep.n_trials=4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not run again" in again.stdout and "once, before the first trial" not in again.stdout
    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{tmp_path}/results/studies.db")
    record = study.user_attrs[ANCHOR_ATTR]
    assert set(record["strategies"]) == {"single", "fastai", "geometric"}
    report = (tmp_path / "results" / "sweeps" / "mlp-digits" / "report.md").read_text()
    assert "anchored on lr_find" in report and f"{record['seconds']:.1f} s" in report
    # the sweep's MLflow run holds the curves, the plots and the suggestions
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    parent = study.user_attrs["tracking"]["parent_run_id"]
    files = {f.path for f in client.list_artifacts(parent, "lr_find")}
    assert {"lr_find/lr_find.json", "lr_find/lr_find-single.png"} <= files
    run = client.get_run(parent)
    assert run.data.tags["lr_find.single.valley"] == f"{record['strategies']['single']['suggestions']['valley']:.4g}"
    assert run.data.metrics["lr_find_seconds"] == pytest.approx(record["seconds"])
    recorded = json.loads(open(client.download_artifacts(parent, "lr_find/lr_find.json", str(tmp_path))).read())
    assert recorded["strategies"]["single"]["losses"][:5] == record["strategies"]["single"]["losses"][:5]
