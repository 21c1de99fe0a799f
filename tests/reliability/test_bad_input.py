"""Every bad input gets a clear error: a malformed row anywhere in a data file ends the
command with exit code 2 and one line naming the file, the line and the field — before any
model is loaded or any run folder written — and examples longer than the model's context are
cut (with a count in the log), never a crash. Loader-level fuzzing of every format is in
tests/unit/test_data.py, config fuzzing in tests/unit/test_config.py."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import prompt_rows, write_jsonl
from rlhfkit.cli import main as cli_main

GOOD = {"sft": {"prompt": "What does the cat do?", "completion": " It sleeps."},
        "reward": {"prompt": "Describe the sea.", "chosen": " Blue and wide.",
                   "rejected": " Wet."},
        "ppo": {"prompt": "The cat sees"}}
FIELDS = {"sft": ["prompt", "completion"], "reward": ["prompt", "chosen", "rejected"],
          "ppo": ["prompt"]}
# kind: (how the bad row is made, the message after "FILE:LINE: ")
BAD = {
    "broken_json": (lambda row, f: b'{"prompt": "a", ', "invalid JSON"),
    "not_an_object": (lambda row, f: b'"just a string"', "expected a JSON object, got a string"),
    "binary_junk": (lambda row, f: b"\x00\x01\x02\x7f garbage", "invalid JSON"),
    "invalid_utf8": (lambda row, f: json.dumps(row).encode()[:-2] + b'\xff"}', "invalid UTF-8"),
    "wrong_type": (lambda row, f: _with(row, f, 5), "field '{f}': expected a string, got int"),
    "empty_list": (lambda row, f: _with(row, f, []),
                   "field '{f}': expected a non-empty list of chat messages"),
    "missing": (lambda row, f: _with(row, f, None, delete=True), "field '{f}': missing"),
    "empty": (lambda row, f: _with(row, f, "   "), "field '{f}': empty text"),
    "lone_surrogate": (lambda row, f: _with(row, f, "\ud800"), "field '{f}': invalid text"),
    "deep_nesting": (lambda row, f: b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b"}",
                     "invalid JSON: nested too deeply"),
}


def _with(row: dict, field: str, value, delete: bool = False) -> bytes:
    row = dict(row)
    if delete:
        del row[field]
    else:
        row[field] = value
    return json.dumps(row).encode()


def expected_message(stage: str, kind: str, field: str, line: int, alone: bool) -> str | None:
    """The error after the file name, or None when the case is no error: an empty prompt
    is allowed in SFT and preference data, and a preference file whose only row has no
    prompt is in the Anthropic HH layout (the prompt is the texts' shared start)."""
    if kind == "empty" and stage != "ppo" and field == "prompt":
        return None
    if kind == "missing" and field == "prompt" and alone:
        if stage == "reward":
            return None
        if stage == "ppo":  # no row has a prompt: the file, not a line, is at fault
            return ": cannot tell the layout from the columns (none)"
    problem = BAD[kind][1]
    if kind == "empty_list" and field != "prompt":  # a chat reply needs a chat prompt
        problem = "field '{f}': chat messages need a prompt that is chat messages too"
    return f":{line}: " + problem.format(f=field)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stage=st.sampled_from(["sft", "reward", "ppo"]), before=st.integers(0, 4),
       after=st.integers(0, 3), kind=st.sampled_from(sorted(BAD)), pick=st.integers(0, 2))
def test_a_bad_row_anywhere_is_exit_code_2_and_one_line_naming_file_line_and_field(
        tmp_path_factory, tiny_gpt2_dir, capsys, stage, before, after, kind, pick):
    field = FIELDS[stage][pick % len(FIELDS[stage])]
    expected = expected_message(stage, kind, field, before + 1, alone=before + after == 0)
    if expected is None:
        return
    folder = tmp_path_factory.mktemp("bad_row")
    path, out = folder / "data.jsonl", folder / "run"
    good = json.dumps(GOOD[stage]).encode()
    path.write_bytes(b"\n".join([good] * before + [BAD[kind][0](GOOD[stage], field)]
                                + [good] * after) + b"\n")
    data = "prompts" if stage == "ppo" else "data"
    model = "policy" if stage == "ppo" else "model"
    extra = [f"reward.functions=[{folder / 'r.py'}:f]", "value.kind=head"] if stage == "ppo" else []
    code = cli_main([stage, f"{model}={tiny_gpt2_dir}", f"{data}={path}", f"out={out}", *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}{expected}"), lines[0]
    assert not out.exists()  # nothing was written


def test_examples_longer_than_the_model_context_are_cut_and_counted(tmp_path, tiny_gpt2_dir,
                                                                   capsys):
    """The tiny GPT-2 has 256 positions. SFT asks for max_length=512 (the default) and PPO
    for 300-token prompts: both are cut to the context with a warning and a count, where
    they used to crash deep inside the model with an index error."""
    long_text = " ".join(["word"] * 600)
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": long_text, "completion": " ok."},
                                                   {"prompt": "short", "completion": " ok."}])
    assert cli_main(["sft", f"model={tiny_gpt2_dir}", f"data={sft_data}",
                     f"out={tmp_path / 'sft'}", "eval_fraction=0", "max_steps=1",
                     "device=cpu"]) == 0
    err = capsys.readouterr().err
    assert f"max_length=512 is longer than the context of '{tiny_gpt2_dir}' (256 tokens)" in err
    assert "truncated 1 of 2 SFT examples to max_length=256" in err

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": long_text}] + prompt_rows(3))
    (tmp_path / "r.py").write_text("def f(p, r):\n    return [1.0] * len(r)\n")
    args = ["ppo", f"policy={tiny_gpt2_dir}", f"prompts={prompts}",
            f"reward.functions=[{tmp_path / 'r.py'}:f]", "value.kind=head",
            "batch.prompts_per_update=4", "batch.micro_batch_size=4", "batch.num_updates=1",
            "sampling.max_new_tokens=6", "sampling.max_prompt_length=300", "device=cpu"]
    assert cli_main([*args, f"out={tmp_path / 'ppo'}"]) == 0
    err = capsys.readouterr().err
    assert "sampling.max_prompt_length=300 + max_new_tokens=6 is more than the 256-token " \
           "context" in err and "prompts keep their last 250 tokens" in err
    assert "truncated 1 of 4 prompts to max_prompt_length=250" in err
    # on_long_prompt=error: the file and the field are named
    assert cli_main([*args, f"out={tmp_path / 'ppo2'}", "sampling.on_long_prompt=error"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {prompts}: field 'prompt': prompt 0 has ")
    assert "more than max_prompt_length=250" in error
