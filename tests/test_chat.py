"""`shelley chat`: the REPL driven through stdin, in chat mode (scratch GPT) and co-writing mode."""

from __future__ import annotations

import pytest

from shelley.config import GenerationConfig


def _session(path, **gen):
    from shelley.generate.chat import ChatSession, detect_mode
    from shelley.generate.load import load_for_generation

    loaded = load_for_generation(str(path))
    g = GenerationConfig(**({"max_new_tokens": 8, "min_new_tokens": 3} | gen))
    return ChatSession(loaded.model, loaded.tokenizer, g, detect_mode(loaded.tokenizer))


def test_chat_repl_replies_obeys_commands_and_quits(cli, scratch_run):
    stdin = "What is 2 + 3?\n/temp 0.5\n/topp 0.8\n/temp hot\nAnd 4 + 4?\n/reset\n/quit\nnever read\n"
    from typer.testing import CliRunner

    from shelley.cli import app

    res = CliRunner().invoke(
        app, ["chat", str(scratch_run), "-n", "8", "--set", "generation.min_new_tokens=3"], input=stdin
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "chat mode" in out
    replies = [chunk.split("you> ")[0] for chunk in out.split("shelley> ")[1:]]
    assert len(replies) == 2 and all(r.strip("\n") for r in replies)  # two streamed, non-empty replies
    assert "temperature = 0.5" in out and "top_p = 0.8" in out
    assert "/temp needs a valid float (got 'hot'); temperature stays 0.5" in out
    assert "conversation reset" in out and out.rstrip().endswith("bye")
    assert "never read" not in out


def test_end_of_input_quits_cleanly(cli, tiny_run):
    from typer.testing import CliRunner

    from shelley.cli import app

    res = CliRunner().invoke(app, ["chat", str(tiny_run), "-n", "4"], input="The storm\n")
    assert res.exit_code == 0, res.output
    assert "continue mode" in res.output and res.output.count("shelley> ") == 1 and "bye" in res.output


def test_chat_session_reset_forgets_the_conversation(scratch_run):
    s = _session(scratch_run)
    assert s.mode == "chat"
    s.reply("What is 1 + 1?", stream=False)
    s.reply("And 2 + 2?", stream=False)
    assert len(s.turns) == 2
    prompt, _ = s.prompt("next")
    assert prompt.count("<|user|>") == 3 and prompt.endswith("<|assistant|>\n")
    keep, _ = s.command("/reset")
    assert keep and s.turns == [] and s.prompt("next")[0].count("<|user|>") == 1
    assert s.command("/quit")[0] is False
    assert "unknown command" in s.command("/dance")[1]


def test_cowriting_keeps_the_story_and_fits_the_context(tiny_run):
    s = _session(tiny_run, max_new_tokens=16)
    assert s.mode == "continue"
    first = s.reply("The storm broke at midnight.", stream=False)
    prompt, dropped = s.prompt("Then")
    assert prompt.startswith("The storm broke at midnight." + first) and dropped == 0
    # Fill the story far past the 128-token context: the oldest turns go, the prompt fits.
    s.turns += [(" The ship lay at anchor while the wind rose over the grey water.", " And then")] * 30
    notes = []
    s.reply("Then", stream=False, on_note=notes.append)
    assert notes and "forgot the" in notes[0]
    prompt, dropped = s.prompt("Then")
    assert dropped > 0 and s._n_tokens(prompt) <= 128 - 16


def test_chat_mode_needs_role_tokens(cli, tiny_run):
    res = cli("chat", tiny_run, "--mode", "chat")
    assert res.exit_code == 2 and "--mode continue" in res.output


@pytest.mark.parametrize(("args", "message"), [(["--temperature", "-1"], "temperature"), (["--mode", "poem"], "poem")])
def test_chat_bad_flags(cli, tiny_run, args, message):
    res = cli("chat", tiny_run, *args)
    assert res.exit_code == 2 and message in res.output


def test_scene_command_cowrites_a_whole_scene(cli, tiny_run):
    from typer.testing import CliRunner

    from shelley.cli import app

    stdin = "The storm broke at midnight.\n/scene 120\n/scene 5\n/scene many\n/quit\n"
    res = CliRunner().invoke(app, ["chat", str(tiny_run), "-n", "6"], input=stdin)
    assert res.exit_code == 0, res.output
    assert "(scene: " in res.output and "/scene needs a number of words from 100 to 3000 (got 5)" in res.output
    assert "(got 'many')" in res.output


def test_scene_joins_the_story(tiny_run):
    s = _session(tiny_run)
    s.reply("The storm broke at midnight.", stream=False)
    shown = []
    text = s.scene(100, on_paragraph=shown.append)
    assert len(text.split()) >= 80 and s.turns[-1] == ("", "\n\n" + text)
    assert "\n\n".join(shown) == text
    assert s.turns[0][0] == "The storm broke at midnight." and len(s.turns) == 2  # the scene joined the story


def test_cowriting_replies_run_on_the_decoder_as_generate_writes_them_and_keep_its_cache(tiny_run):
    """A Llama model's replies go through the one-stream decoder: for each turn the text ``generate_texts`` writes
    for that seed (sampled, with min_new_tokens and a stop string), and from the second turn on the decoder
    reads only what is new in the story, not the whole prompt again."""
    from shelley.generate import generate_texts
    from shelley.generate.stream import DecoderEngine

    s = _session(tiny_run, max_new_tokens=24, min_new_tokens=4, stop=["."], top_k=20, temperature=0.9)
    fed: list[int] = []
    for message in ["The storm broke at midnight.", " Then the door opened", " and"]:
        prompt, _ = s.prompt(" " + message.strip() if s.turns else message)
        want = generate_texts(s.model, s.tokenizer, [prompt], s.gen, seed=s.gen.seed + len(s.turns))[0]
        if isinstance(s._stream, DecoderEngine):
            forward = s._stream.decoder.forward
            s._stream.decoder.forward = lambda ids, start, f=forward: fed.append(len(ids)) or f(ids, start)
        got = s.reply(message, stream=False)
        assert got == want and "." not in got[:-1]
        fed.append(-1)  # a turn ends
    assert isinstance(s._stream, DecoderEngine)
    third_turn_first_feed = fed[fed.index(-1, fed.index(-1) + 1) + 1]
    assert third_turn_first_feed < s._n_tokens(s.prompt("x")[0]) // 2  # the story so far came from the cache
