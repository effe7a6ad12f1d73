import argparse

import pytest

from server.cli import main
from server.settings import Settings, add_serve_arguments, settings_from_args
from server.testing import free_port


def test_serve_help_lists_every_setting_with_its_env_twin(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in out, name
        assert "WIDTHWISE_" + name.upper() in out.replace("\n", "").replace(" ", ""), name


@pytest.mark.parametrize("command", ["profile", "convert", "train", "evaluate", "calibrate", "simulate", "bench"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: widthwise " + command in capsys.readouterr().out


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("WIDTHWISE_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("WIDTHWISE_POLICY", "slack")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--max-batch-size", "16"]))
    assert settings.max_batch_size == 16 and settings.policy == "slack"
    assert settings_from_args(parser.parse_args([])).max_batch_size == 4


def test_every_bench_program_is_found_and_takes_its_arguments(capsys):
    import importlib
    import inspect

    from server.cli import bench_programs, main
    from tests.helpers import REPO

    found = bench_programs(REPO)
    assert {"load", "overhead_ab", "tuning", "us_grid", "gpu"} <= set(found)
    for name in found:  # each is `python -m bench.NAME`, and takes its argv like a CLI
        assert list(inspect.signature(importlib.import_module(f"bench.{name}").main).parameters) == ["argv"], name
    assert {"common", "http_client", "http_servers"} - set(found) == {
        "common",
        "http_client",
    }  # helpers are not programs
    assert main(["bench", "no_such_program"]) == 2
    assert "choose one of" in capsys.readouterr().err


def test_event_loop_and_http_parser_reach_uvicorn(monkeypatch, tiny_checkpoint):
    from server import main
    from server.settings import Settings

    seen = {}

    def run(self, sockets):
        seen.update(loop=self.config.loop, http=self.config.http, sockets=[s.getsockname() for s in sockets])
        for s in sockets:
            s.close()

    monkeypatch.setattr(main.DrainingServer, "run", run)
    port = free_port()
    settings = Settings(checkpoint=tiny_checkpoint, event_loop="asyncio", http_parser="h11", port=port)
    assert main.run_server(settings) == 0
    from uvicorn.protocols.http.h11_impl import H11Protocol

    assert seen["loop"] == "asyncio" and issubclass(seen["http"], H11Protocol)
    assert seen["sockets"] == [("127.0.0.1", port)]  # bound before start-up, handed to uvicorn


@pytest.mark.parametrize("command", ["train", "evaluate", "calibrate", "convert", "profile", "simulate"])
def test_help_documents_every_flag_with_its_default(command, capsys):
    from server.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        if not action.required:
            shown = sub.formatter_class(prog="x")._get_help_string(action)
            assert "%(default)" in shown, f"{command} {action.option_strings[0]} does not show its default"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert out.count("(default:") >= sum(
        1 for a in sub._actions if a.option_strings and not a.required and a.dest != "help"
    )


def test_switches_are_bools_written_on_or_off(monkeypatch):
    from server.cli import build_parser
    from server.settings import Settings, settings_from_args

    parser = build_parser()
    settings = settings_from_args(parser.parse_args(["serve", "--jpeg-draft", "on", "--cuda-graphs", "off",
                                                     "--startup-cache", "false", "--auth-metrics", "yes"]))
    assert (settings.jpeg_draft, settings.cuda_graphs, settings.startup_cache, settings.auth_metrics) == (
        True, False, False, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--jpeg-draft", "maybe"])
    monkeypatch.setenv("WIDTHWISE_JPEG_DRAFT", "on")  # the environment twins keep their on/off spelling
    assert Settings().jpeg_draft is True
    assert "default off" in parser._subparsers._group_actions[0].choices["serve"].format_help().replace("\n", " ")
    assert settings.runtime_config().cuda_graphs is False and settings.runtime_config().device == "auto"


def test_shared_weights_on_onnxruntime_are_refused_before_listening(capsys):
    """A flag combination that cannot run is a usage error (exit 2, one line naming the flag), not a
    start-up failure after the port is bound."""
    from server.cli import build_parser

    parser = build_parser()
    with pytest.raises(ValueError, match=r"--weights \(WIDTHWISE_WEIGHTS\): shared weights run on the torch backend"):
        settings_from_args(parser.parse_args(["serve", "--backend", "onnxruntime", "--weights", "shared"]))
    assert settings_from_args(parser.parse_args(["serve", "--weights", "shared"])).runtime_config().weights == "shared"
    assert main(["serve", "--backend", "onnxruntime", "--weights", "shared", "--port", "0"]) == 2
    assert "shared weights run on the torch backend" in capsys.readouterr().err
