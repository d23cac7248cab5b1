"""Passwords in storage and tracking URLs never reach MLflow params or tags, logs, the console or
anything under results/; servers the project starts listen on loopback.

The PostgreSQL cases need a server (SWEEPER_TEST_POSTGRES_URL, from scripts/start_postgres.sh)
and are skipped without one.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import optuna
import pytest
from helpers.forked_cli import run_sweeper
from helpers.processes import NEEDS_POSTGRES, POSTGRES, with_tests_on_path
from helpers.servers import MlflowServer, free_port
from mlflow import MlflowClient

from sweeper.cli import main
from sweeper.secrets import mask_text, mask_url, passwords_in

SECRET = "Sw33p-s3cret-Qx7"  # recognisable anywhere it might leak
REPOSITORY = Path(__file__).resolve().parent.parent


# --- masking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "hunter2",
        "Zx9+/=ab",  # base64-like: a "/" (SQLAlchemy takes it unescaped)
        "p@ss",  # an "@" before the host's
        "p#ss?x",  # what would start a fragment or a query
        "p:ss",
        "p%2Fss",  # percent-escaped
        "pa ss",  # a space: the URL goes on past it
        "p@ss/w:rd#x",  # all of them at once: SQLAlchemy reads "p" and a host "ss"
    ],
)
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://sweeper:{}@db.example.org:5432/sweeps",
        "postgresql+psycopg2://sweeper:{}@10.0.0.7/sweeps?sslmode=require",
        "https://sweeper:{}@mlflow.example.org",
        "http://sweeper:{}@[::1]:5000/",
    ],
)
def test_masking_hides_the_whole_password_and_keeps_the_rest(template, password):
    url = template.format(password)
    masked = template.format("***")
    assert mask_url(url) == masked
    # inside an error message, quoted or not, as drivers and HTTP clients write them
    for text in (f"cannot open {url}: refused", f"request to '{url}' failed", f"({url})"):
        assert mask_text(text) == text.replace(url, masked)


@pytest.mark.parametrize(
    "text",
    ["http://127.0.0.1:5000/api/2.0/mlflow", "sqlite:////tmp/results/studies.db", "user@example.org", "see https://hydra.cc/docs/1.2/x"],
)
def test_masking_leaves_text_without_credentials_alone(text):
    assert mask_text(text) == text


def test_password_like_query_parameters_are_masked():
    assert mask_text("https://h/x?token=abc&x=1&password=def") == "https://h/x?token=***&x=1&password=***"
    assert mask_url("postgresql://u@h/db?sslmode=require&sslpassword=abc") == "postgresql://u@h/db?sslmode=require&sslpassword=***"


def test_a_user_name_with_an_at_sign_keeps_its_password_masked():
    # Azure's PostgreSQL names users user@server: the password follows the second "@"'s colon.
    url = "postgresql://admin@myserver:hunter2@myserver.postgres.example.org/sweeps"
    assert mask_url(url) == mask_text(url) == "postgresql://admin@myserver:***@myserver.postgres.example.org/sweeps"


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("storage.url=postgresql://u:hunter2@h/db", {"hunter2"}),
        ("storage.url='postgresql://u:pa ss@h/db", {"pa ss"}),
        # both readings, and the pieces a driver may quote as a host name or a database
        ("storage.url=postgresql://u:Sw33p@s3cr3t/w:rd@h/db", {"Sw33p@s3cr3t/w:rd", "Sw33p", "s3cr3t", "w", "rd"}),
        ("storage.url=postgresql://u@h/db?sslmode=require&password=pa ss", {"pa ss"}),
        ("storage.url=postgresql://u:p%40ss@h/db", {"p%40ss", "p@ss"}),  # as written, and as sent
        ("results_dir=/tmp/x sampler.seed=3", set()),
    ],
)
def test_the_passwords_of_a_command_line_are_read_every_way(argument, expected):
    assert passwords_in([argument]) == expected


def test_known_passwords_are_masked_wherever_they_stand_but_short_ones_only_in_urls():
    text = 'could not translate host name "s3cr3t" to address; pw=ab'
    assert mask_text(text, {"s3cr3t", "ab"}) == 'could not translate host name "***" to address; pw=ab'


# --- a failing connection ---------------------------------------------------------------------


def everything_written(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def failing_commands() -> list:
    port = free_port()  # nothing listens there
    storage = f"storage.url=postgresql://sweeper:{SECRET}@127.0.0.1:{port}/sweeps"
    tracking = f"tracking.uri=http://sweeper:{SECRET}@127.0.0.1:{port}"
    commands = [
        pytest.param(["sweep", storage], "storage.url", id="sweep-storage"),
        pytest.param(["sweep", tracking], "tracking.uri", id="sweep-tracking"),
        pytest.param(["train", tracking], "tracking.uri", id="train-tracking"),
        pytest.param(["report", storage], "storage.url", id="report-storage"),
    ]
    if POSTGRES:  # a server that answers, and refuses the password
        wrong = POSTGRES.replace(f":{urlsplit(POSTGRES).password}@", f":{SECRET}@")
        commands.append(pytest.param(["sweep", f"storage.url={wrong}"], "storage.url", id="sweep-wrong-password"))
    return commands


@pytest.mark.parametrize(("argv", "setting"), failing_commands())
def test_a_failing_connection_keeps_the_password_out(argv, setting, workdir, capfd, caplog):
    code = main([*argv, "results_dir=results"])
    out, err = capfd.readouterr()
    assert code == 2 and f"error: {setting}: " in err
    assert "sweeper:***@127.0.0.1" in err  # the URL is named, its password masked
    for text in (out, err, caplog.text):
        assert SECRET not in text
    assert SECRET.encode() not in everything_written(workdir)


# --- what the CLI prints about a URL on its command line -------------------------------------

ECHO_PORT = free_port()  # nothing listens there
# (id, override, its password): each a way an override's URL came back in an error, whole or in
# part. The first three reach the storage's driver, the others stop in Hydra's parser.
ECHOES = [
    ("space", "storage.url=postgresql://sweeper:Sw33p s3cret@127.0.0.1:{port}/sweeps", "Sw33p s3cret"),
    ("query-password", "storage.url='postgresql://sweeper@127.0.0.1:{port}/sweeps?sslmode=disable&password=Sw33p-s3cret'", "Sw33p-s3cret"),
    # SQLAlchemy reads the password "Sw33p" and the host "s3cr3t", which the driver quotes
    ("at-slash-quoted", "storage.url='postgresql://sweeper:Sw33p@s3cr3t/w:rd#x@127.0.0.1:{port}/sweeps'", "Sw33p@s3cr3t/w:rd#x"),
    ("tracking-space", "tracking.uri=http://sweeper:Sw33p s3cret@127.0.0.1:{port}", "Sw33p s3cret"),
    ("at-slash-colon-hash", "storage.url=postgresql://sweeper:Sw33p@s3cr3t/w:rd#x@127.0.0.1:{port}/sweeps", "Sw33p@s3cr3t/w:rd#x"),
    ("extra-parenthesis", "storage.url=postgresql://sweeper:Sw33p-s3cret@127.0.0.1:{port}/sweeps)", "Sw33p-s3cret"),
    ("unbalanced-quote", "storage.url='postgresql://sweeper:Sw33p-s3cret@127.0.0.1:{port}/sweeps", "Sw33p-s3cret"),
    ("mistyped-key", "storag.url=postgresql://sweeper:Sw33p-s3cret@127.0.0.1:{port}/sweeps", "Sw33p-s3cret"),
    ("query-password-unquoted", "storage.url=postgresql://sweeper@127.0.0.1:{port}/sweeps?password=Sw33p-s3cret", "Sw33p-s3cret"),
]


@pytest.mark.parametrize(("override", "password"), [pytest.param(o, p, id=i) for i, o, p in ECHOES])
def test_an_error_about_a_url_on_the_command_line_never_prints_its_password(override, password, workdir, capfd, caplog):
    argv = ["sweep", override.format(port=ECHO_PORT), "sweep.trainer=helpers.trainers.StandInTrainer", "results_dir=results"]
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == 2 and err.startswith("sweeper sweep: error: ") and len(err.splitlines()) == 1, err
    assert "***" in err  # the URL is still named, masked
    pieces = [password, *(piece for piece in re.split(r"[@/:#]", password) if len(piece) >= 4)]
    for text in (out, err, caplog.text):
        for piece in pieces:
            assert piece not in text, (piece, text)
    assert not (workdir / "results").exists()  # stopped before anything was made


# --- a whole sweep ----------------------------------------------------------------------------


def recorded_in_mlflow(server: MlflowServer, experiment: str) -> bytes:
    """Every param, tag and artifact of every run of the experiment, read with MLflow's client."""
    client = MlflowClient(server.url)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    assert runs
    texts = [json.dumps([run.data.params, run.data.tags, run.info.run_name]).encode() for run in runs]
    for run in runs:
        folder = Path(client.download_artifacts(run.info.run_id, ""))
        texts.append(everything_written(folder))
    return b"".join(texts)


def recorded_in_study(storage: str, name: str) -> str:
    from sweeper.sweep.storage import StorageSpec

    study = optuna.load_study(study_name=name, storage=StorageSpec(storage).open())
    attrs = [study.user_attrs] + [[t.user_attrs, t.system_attrs, t.params] for t in study.trials]
    return repr(attrs)


@pytest.fixture(scope="module")
def secret_sweep(tmp_path_factory, empty_mlflow_store):
    """One small sweep (the stand-in trainer, two trials) recording to an MLflow server through a
    URL with a password, and storing its study in PostgreSQL through a URL with a password given
    on the command line (the way most likely to leak) when a server is there. Returns everything
    it wrote, printed or recorded, by place."""
    tmp_path = tmp_path_factory.mktemp("secret-sweep")
    server = MlflowServer(tmp_path / "server", store=empty_mlflow_store).start()
    name = f"secret-{uuid.uuid4().hex[:8]}"
    overrides = [
        "sweep.trainer=helpers.trainers.StandInTrainer", "tracking=server", f"sweep.name={name}", "sweep.n_trials=2",
        "sweep.workers=1", "sweep.poll=0.2", "sweep.live=false", "train.epochs=2", "pruner=none",
    ]  # fmt: skip
    if POSTGRES:
        overrides.append(f"storage.url={POSTGRES}")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url.replace("://", f"://sweeper:{SECRET}@"),
        "PYTHONPATH": with_tests_on_path(),
    }
    try:
        done = run_sweeper(["sweep", *overrides], tmp_path, env, timeout=240)  # helpers.forked_cli
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "2/2 finished" in done.stdout
        places = {
            "console": (done.stdout + done.stderr).encode(),
            "results/ (study storage, worker logs, reports)": everything_written(tmp_path / "results"),
            "MLflow params, tags and artifacts": recorded_in_mlflow(server, name),
            "MLflow's own store": everything_written(server.folder),
        }
        if POSTGRES:
            places["the Optuna study"] = recorded_in_study(POSTGRES, name).encode()
        yield places
    finally:
        server.stop()
        if POSTGRES:
            from sweeper.sweep.storage import StorageSpec

            try:
                optuna.delete_study(study_name=name, storage=StorageSpec(POSTGRES).open())
            except KeyError:
                pass  # the sweep failed before making it


def leaks(places: dict[str, bytes], password: str) -> list[str]:
    return [place for place, data in places.items() if password.encode() in data]


@pytest.mark.slow
def test_a_sweep_keeps_the_tracking_password_out_of_records_logs_console_and_results(secret_sweep):
    assert b"sweeper:***@127.0.0.1" in secret_sweep["console"]  # the URL is shown, masked
    assert b"sweeper:***@" in secret_sweep["MLflow params, tags and artifacts"]  # and recorded, masked
    assert leaks(secret_sweep, SECRET) == []


@pytest.mark.slow
@pytest.mark.postgres
@NEEDS_POSTGRES
def test_a_sweep_keeps_the_storage_password_out_of_records_logs_console_and_results(secret_sweep):
    assert "the Optuna study" in secret_sweep  # the sweep stored its study in PostgreSQL
    assert f"{urlsplit(POSTGRES).username}:***@".encode() in secret_sweep["console"]
    assert leaks(secret_sweep, urlsplit(POSTGRES).password) == []


# --- servers listen on loopback ---------------------------------------------------------------


def test_nothing_tells_a_server_to_listen_on_every_interface():
    # The code paths that start or describe servers: the package, its scripts and configs.
    files = [p for folder in ("sweeper", "scripts", "conf") for p in (REPOSITORY / folder).rglob("*") if p.is_file()]
    files = [p for p in files if p.suffix in (".py", ".sh", ".yaml")]
    assert files
    for path in files:
        text = path.read_text()
        for wildcard in ("0.0.0.0", "listen_addresses='*'", "listen_addresses=*"):
            assert wildcard not in text, f"{path.relative_to(REPOSITORY)} says {wildcard}"
    script = (REPOSITORY / "scripts" / "start_postgres.sh").read_text()
    assert "listen_addresses=127.0.0.1" in script


@NEEDS_POSTGRES
@pytest.mark.postgres
def test_the_test_postgres_server_listens_on_loopback_only():
    import sqlalchemy

    from sweeper.sweep.storage import StorageSpec

    engine = sqlalchemy.create_engine(StorageSpec(POSTGRES).driver_url)
    with engine.connect() as connection:
        listen = connection.execute(sqlalchemy.text("SHOW listen_addresses")).scalar()
    engine.dispose()
    assert listen in ("127.0.0.1", "localhost", "::1")
