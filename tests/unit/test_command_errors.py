"""A bad flag of any command is one line, `lynx-sglang COMMAND: error: ...`, and exit 2: argparse's
usage dump (12 lines for calibrate) buried the line that says what is wrong."""

import pytest

from lynx_sglang import cli


@pytest.mark.parametrize("argv, message", [
    (["ab", "--n", "0"], "--n must be at least 1"),
    (["sweep", "--bogus"], "unrecognized arguments: --bogus"),
    (["calibrate", "--max-loss", "-1"], "--max-loss must be in (0, 100] points"),
    (["eval", "--count", "x"], "argument --count: invalid int value: 'x'"),
    (["policies", "--bogus"], "unrecognized arguments: --bogus"),
    (["train-embedded", "--steps", "10"], "the following arguments are required: --out"),
    (["bench", "kernels", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_a_bad_flag_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as ended:
        cli.main(argv)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    prog = " ".join(argv[:2] if argv[0] == "bench" else argv[:1])
    assert err == f"lynx-sglang {prog}: error: {message}\n"
