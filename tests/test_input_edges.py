"""Bad input at the edges (issue 18): a model field naming a system folder, a symlink or a file is refused before
anything in it is read; a model's own Python code is never run (trust_remote_code stays off); a spec or report
file that is huge or binary is refused, by its size or bytes, before any parser sees it.

"Nothing read" is observed with an audit hook: Python raises an "open" audit event for every file it opens."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab.bench import loader
from lab.bench.validate import SPEC_FILE_LIMIT, validate
from lab.cli import main
from lab.errors import SpecError
from lab.report.importer import REPORT_FILE_LIMIT, ReportFormatError, import_experiments
from lab.report.rerun import run_specs

_recording: list[list[str]] = []  # the lists open events are appended to, while opened_files() is active


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _recording and isinstance(args[0], (str, bytes)):
        _recording[-1].append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_record_open)  # a hook cannot be removed: it records only inside opened_files()


@contextmanager
def opened_files():
    """The absolute paths of the files Python opens inside the block."""
    opened: list[str] = []
    _recording.append(opened)
    try:
        yield opened
    finally:
        _recording.remove(opened)


def _inside(paths: list[str], folder: str | Path) -> list[str]:
    root = os.path.realpath(folder)
    return [p for p in paths if os.path.commonpath([os.path.realpath(p), root]) == root]


@pytest.fixture
def no_loading(monkeypatch):
    """Every from_pretrained the lab calls fails the test: the checks must stop a bad model before these."""
    import transformers
    from diffusers import DiffusionPipeline

    def called(*args, **kwargs):
        raise AssertionError(f"from_pretrained{args} was called")

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM,
                DiffusionPipeline):
        monkeypatch.setattr(cls, "from_pretrained", called)


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir) -> Path:
    """A tiny Llama folder of this test's own, to change."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def assert_refused_unread(model: str, message: str, unread: str | Path) -> None:
    """validate() refuses `model` with `message`, having opened nothing in `unread`."""
    with opened_files() as opened, pytest.raises(SpecError, match=message):
        validate({"model": model})
    assert _inside(opened, unread) == []


# --- the model field: what a local path may be --------------------------------------------------------------
@pytest.mark.parametrize("model, message, unread", [
    ("/etc", r"^field 'model': model folder '/etc' lies in the system folder /etc; .*allowed: a folder holding "
             r"config\.json", "/etc"),
    ("/etc/", r"^field 'model': model folder '/etc/' lies in the system folder /etc;", "/etc"),
    ("/proc/1", r"^field 'model': model folder '/proc/1' lies in the system folder /proc;", "/proc"),
    ("/dev/zero", r"^field 'model': model folder '/dev/zero' lies in the system folder /dev;", "/dev"),
    ("/", r"^field 'model': model folder '/' is the system folder /;", "/etc"),
])
def test_a_system_folder_is_refused_before_anything_in_it_is_read(no_loading, model, message, unread):
    assert_refused_unread(model, message, unread)


def test_a_system_folder_reached_by_dot_dots_is_refused(tmp_path, no_loading):
    model = f"{tmp_path}{'/..' * len(tmp_path.parts)}/etc"
    assert_refused_unread(model, r"lies in the system folder /etc", "/etc")


@pytest.mark.parametrize("trailing", ["", "/"])
def test_a_symlinked_folder_is_refused_naming_the_folder_to_give(model_copy, tmp_path, no_loading, trailing):
    link = tmp_path / "link"
    link.symlink_to(model_copy, target_is_directory=True)
    assert_refused_unread(f"{link}{trailing}", rf"^field 'model': model folder '{re.escape(f'{link}{trailing}')}' is a "
                                         rf"symlink \(to {re.escape(str(model_copy))}\); allowed: the folder it "
                                         rf"points to", model_copy)


def test_a_symlink_to_a_system_folder_is_refused(tmp_path, no_loading):
    link = tmp_path / "innocent-model"
    link.symlink_to("/etc", target_is_directory=True)
    assert_refused_unread(str(link), r"is a symlink \(to /etc\)", "/etc")


def test_a_file_is_refused_naming_its_folder(model_copy, no_loading):
    config = model_copy / "config.json"
    assert_refused_unread(str(config), rf"^field 'model': model '{re.escape(str(config))}' is a file, not a folder "
                                 rf"\(give its folder, {re.escape(str(model_copy))}\); allowed: a folder holding "
                                 rf"config\.json", model_copy)


def test_a_folder_without_a_config_is_refused(tmp_path, no_loading):
    (tmp_path / "notes.txt").write_text("not a model")
    assert_refused_unread(str(tmp_path), r"^field 'model': model folder '.*' holds no config\.json or "
                                   r"model_index\.json, so it is no model folder", tmp_path)


@pytest.mark.parametrize("linked", ["config.json", "tokenizer.json", "model.safetensors"])
def test_a_file_linked_from_outside_the_folder_is_refused_and_never_read(model_copy, tmp_path, no_loading, linked):
    outside = tmp_path / "elsewhere" / linked
    outside.parent.mkdir()
    (model_copy / linked).rename(outside)  # the real file, moved out: only the link is left in the folder
    (model_copy / linked).symlink_to(outside)
    assert_refused_unread(str(model_copy), rf"model folder '.*': {re.escape(linked)} is a symlink to "
                                     rf"{re.escape(str(outside))}, outside the folder; allowed: files inside the "
                                     rf"model folder", outside.parent)


def test_a_component_linked_from_outside_a_pipeline_is_refused(tmp_path, no_loading):
    pipeline = tmp_path / "pipeline"
    (pipeline / "transformer").mkdir(parents=True)
    (pipeline / "model_index.json").write_text('{"_class_name": "DiTPipeline", "transformer": '
                                               '["diffusers", "DiTTransformer2DModel"]}')
    (pipeline / "transformer" / "config.json").symlink_to("/etc/passwd")
    assert_refused_unread(str(pipeline), r"transformer/config\.json is a symlink to /etc/passwd, outside the folder",
                    "/etc")


def test_an_oversized_config_is_refused_unread(model_copy, no_loading):
    with open(model_copy / "config.json", "r+b") as f:
        f.truncate(loader.CONFIG_LIMIT + 1)  # sparse: no disk used
    assert_refused_unread(str(model_copy), rf"config\.json is {loader.CONFIG_LIMIT + 1} bytes, too big for a model's "
                                     rf"config .*allowed: at most {loader.CONFIG_LIMIT} bytes", model_copy)


def test_links_within_the_folder_pass(model_copy):
    (model_copy / "weights").mkdir()
    (model_copy / "model.safetensors").rename(model_copy / "weights" / "model.safetensors")
    (model_copy / "model.safetensors").symlink_to(Path("weights") / "model.safetensors")
    assert validate({"model": str(model_copy)}).model_kind == "llm"


def _cache_snapshot(model: Path, cache: Path) -> Path:
    """`model` laid out as the Hugging Face cache keeps a hub id: files in blobs/, a snapshot of links to them."""
    repository = cache / "models--someone--tiny"
    snapshot = repository / "snapshots" / "0123abcd"
    (repository / "blobs").mkdir(parents=True)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text("0123abcd")
    snapshot.mkdir(parents=True)
    for file in model.iterdir():
        file.rename(repository / "blobs" / file.name)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / file.name)
    return snapshot


def test_a_hugging_face_cache_snapshot_still_loads_by_path_and_by_hub_id(model_copy, tmp_path, monkeypatch):
    from huggingface_hub import constants
    snapshot = _cache_snapshot(model_copy, tmp_path / "hub")
    assert validate({"model": str(snapshot)}).model_kind == "llm"
    loaded = loader.load(str(snapshot), device="cpu")
    assert loaded.model.config.vocab_size == 260
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # where hub ids are looked up
    assert validate({"model": "someone/tiny"}).model_kind == "llm"


def test_a_cache_snapshot_link_leaving_its_blobs_is_refused(model_copy, tmp_path, no_loading):
    snapshot = _cache_snapshot(model_copy, tmp_path / "hub")
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to("/etc/passwd")
    assert_refused_unread(str(snapshot), r"tokenizer\.json is a symlink to /etc/passwd, outside the folder", "/etc")


def test_the_llm_page_shows_the_refusal_and_stores_nothing(model_copy, tmp_path):
    from streamlit.testing.v1 import AppTest

    from lab import jobs
    from tests.conftest import ROOT
    link = tmp_path / "link"
    link.symlink_to(model_copy, target_is_directory=True)
    at = AppTest.from_file(str(ROOT / "pages" / "1_LLM_Lab.py"), default_timeout=60).run()
    next(s for s in at.selectbox if s.label == "Model").select("other (local folder or cached hub id)").run()
    next(t for t in at.text_input if t.label == "Model path or hub id").set_value(str(link)).run()
    next(b for b in at.button if b.label == "Run experiment").click().run()
    assert not at.exception
    assert at.error[0].value.startswith(f"Cannot run this experiment: field 'model': model folder '{link}' is a "
                                        f"symlink (to {model_copy})")
    assert jobs.job_for_experiment(1) is None


def test_a_draft_model_folder_is_checked_again_when_the_engine_loads_it(model_copy, tmp_path, no_loading):
    """A draft model is loaded mid-run by the engine (load_llm), after validation: its folder is checked there too."""
    from lab.llm.models import load_llm
    link = tmp_path / "draft-link"
    link.symlink_to(model_copy, target_is_directory=True)
    with opened_files() as opened, pytest.raises(SpecError, match=f"model folder '{link}' is a symlink"):
        load_llm(str(link), "cpu")
    assert _inside(opened, model_copy) == []


def test_the_pipeline_form_refuses_a_system_folder_unread():
    from lab.views.forms import pipeline_denoiser
    with opened_files() as opened:
        architecture, denoiser, error = pipeline_denoiser("/etc")
    assert (architecture, denoiser) == (None, None) and "lies in the system folder /etc" in error
    assert _inside(opened, "/etc") == []


@pytest.mark.parametrize("index, cause", [("{not json", "not valid JSON"), ("[1, 2]", "a JSON list, not an object")])
def test_the_pipeline_form_names_a_broken_model_index(tmp_path, index, cause):
    from lab.views.forms import pipeline_denoiser
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(index)
    assert cause in pipeline_denoiser(str(tmp_path / "pipe"))[2]


def test_the_what_if_config_reader_refuses_a_device_and_a_binary_file(tmp_path):
    from lab.whatif.model import read_config
    with pytest.raises(SpecError, match="/dev/zero: not a regular file"):
        read_config("/dev/zero")  # read whole, it would never end
    (tmp_path / "config.json").write_bytes(b"\x00\x01binary")
    with pytest.raises(SpecError, match="not a text file"):
        read_config(tmp_path)


# --- a model's own code: never run --------------------------------------------------------------------------
MARK_WHEN_RUN = "import pathlib\npathlib.Path({mark!r}).write_text('the model folder ran code')\n"


def _with_own_code(model: Path, model_type: str, mark: Path) -> None:
    """The model's config names classes in a Python file of the folder, which marks `mark` if it ever runs."""
    (model / "custom_llama.py").write_text(MARK_WHEN_RUN.format(mark=str(mark)) + (
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n"))
    config = json.loads((model / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "custom_llama.CustomConfig",
                                                   "AutoModelForCausalLM": "custom_llama.CustomModel"})
    (model / "config.json").write_text(json.dumps(config))


def test_an_llm_needing_its_own_code_is_refused_and_its_code_never_runs(model_copy, tmp_path):
    from lab.llm.models import load_llm
    mark = tmp_path / "ran"
    _with_own_code(model_copy, "custom-llama", mark)
    message = (r"model '.*' needs its own Python code \(config\.json auto_map: 'custom_llama\.CustomConfig, "
               r"custom_llama\.CustomModel'\), and the lab never runs a model's code \(trust_remote_code stays off\)")
    with pytest.raises(SpecError, match=message):
        validate({"model": str(model_copy)})
    with pytest.raises(SpecError, match=message):
        loader.load(str(model_copy), device="cpu", kind="llm")  # a worker checks again before loading
    # below the lab's checks, transformers refuses too: with trust_remote_code on, this would load CustomModel
    with pytest.raises(ValueError, match="contains custom code which must be executed"):
        load_llm(str(model_copy), "cpu")
    assert not mark.exists()


def test_an_auto_map_beside_a_type_transformers_knows_is_ignored(model_copy, tmp_path):
    mark = tmp_path / "ran"
    _with_own_code(model_copy, "llama", mark)
    assert validate({"model": str(model_copy)}).model_kind == "llm"
    loaded = loader.load(str(model_copy), device="cpu")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"  # transformers' own class, not CustomModel
    assert not mark.exists()


def _pipeline_with_own_code(folder: Path, mark: Path, component: bool) -> str:
    """A pipeline folder whose model_index.json names a Python file of the folder; the file's path in it."""
    code = (folder / "transformer" / "my_dit.py") if component else (folder / "my_pipeline.py")
    code.parent.mkdir(parents=True)
    code.write_text(MARK_WHEN_RUN.format(mark=str(mark)) + "class Custom:\n    pass\n")
    index = {"_class_name": "DiTPipeline" if component else ["my_pipeline", "Custom"], "_diffusers_version": "0.42.1",
             "transformer": ["my_dit", "Custom"] if component else ["diffusers", "DiTTransformer2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(code.relative_to(folder))


@pytest.mark.parametrize("component", [False, True], ids=["pipeline class", "component"])
def test_a_pipeline_needing_its_own_code_is_refused_and_its_code_never_runs(tmp_path, component):
    from lab.diffusion.pipelines import load_pipeline
    folder, mark = tmp_path / "pipeline", tmp_path / "ran"
    code = _pipeline_with_own_code(folder, mark, component)
    with pytest.raises(SpecError, match=rf"needs its own Python code \({re.escape(code)}\), and the lab never runs"):
        validate({"model": str(folder)})
    # below the lab's checks, diffusers refuses too
    with pytest.raises(SpecError, match="could not be loaded"):
        load_pipeline(str(folder), "cpu")
    assert not mark.exists()


# --- spec and report files: refused by size and bytes, before parsing ---------------------------------------
def _cli_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # no disk used; never read if the size is checked first
    return path


def test_a_spec_file_over_the_limit_is_refused_before_it_is_read(tmp_path, capsys):
    path = tmp_path / "huge.toml"
    path.write_text("name = 'x'\n" + "#" * SPEC_FILE_LIMIT)
    with opened_files() as opened:
        err = _cli_error(capsys, "run", str(path))
    assert f"{path}: {path.stat().st_size:,} bytes is too big for a spec file; allowed: at most 1,048,576 " \
           f"bytes (1 MiB)" in err
    assert _inside(opened, path) == []


def test_a_report_over_the_limit_is_refused_before_it_is_read(tmp_path, capsys):
    path = _sparse(tmp_path / "huge.json", REPORT_FILE_LIMIT + 1)
    with opened_files() as opened:
        run_err = _cli_error(capsys, "run", str(path))
        import_err = _cli_error(capsys, "import", str(path))
    too_big = f"{path}: {REPORT_FILE_LIMIT + 1:,} bytes is too big for a"
    assert f"{too_big} spec or report file; allowed: at most 67,108,864 bytes (64 MiB)" in run_err
    assert f"{too_big} JSON report; allowed: at most 67,108,864 bytes (64 MiB) (nothing was imported)" in import_err
    assert _inside(opened, path) == []


BINARY = [(b"name = 'x'\n\x00\x01\x02", r"not a text file \(a NUL byte at byte 11\)"),
          ("name = 'x'".encode("utf-16"), r"not a text file \(a NUL byte at byte 3\)"),
          ("name = 'café'".encode("latin-1"), r"not a text file \(not UTF-8 at byte 11\)")]


@pytest.mark.parametrize("content, cause", BINARY, ids=["binary", "utf-16", "latin-1"])
@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_binary_spec_file_is_a_clear_cli_error(tmp_path, capsys, content, cause, suffix):
    path = tmp_path / f"spec{suffix}"
    path.write_bytes(content)
    err = _cli_error(capsys, "run", str(path))
    assert len(err.splitlines()) == 1
    assert re.search(rf"{re.escape(str(path))}: {cause}; allowed: a spec (or report )?file in UTF-8 text", err)


@pytest.mark.parametrize("content, cause", BINARY, ids=["binary", "utf-16", "latin-1"])
def test_a_binary_report_is_refused_and_nothing_imported(tmp_path, content, cause):
    path = tmp_path / "report.json"
    path.write_bytes(content)
    with pytest.raises(ReportFormatError, match=rf"{cause}; allowed: a JSON report in UTF-8 text"):
        import_experiments(path)


@pytest.mark.parametrize("special", ["/dev/null", "folder"])
def test_a_spec_path_that_is_no_regular_file_is_refused(tmp_path, capsys, special):
    path = special if special.startswith("/") else str(tmp_path)
    err = _cli_error(capsys, "run", path)
    assert f"{path}: not a regular file (a folder, a device or a pipe); allowed: a spec file" in err
    with pytest.raises(SpecError, match="not a regular file"):
        run_specs(path)
