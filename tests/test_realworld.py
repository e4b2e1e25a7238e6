"""Real scripts from real studios (tests/realworld, see its SOURCE.md): they ingest, and what they hold survives.

Each construct of issue 12 is checked on the real file that has it, or on a
faithful fixture where the real one may not be copied.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ingest.errors import NothingToIndex, ParseError
from ingest.load import load_chunks
from ingest.parsers.dialogue import dialogue_sections, split_speaker
from ingest.parsers.markup import strip_markup
from kb.store import Store
from tests.conftest import invoke_json
from tests.test_parsers_scripts import lines, parse_file

REALWORLD = Path(__file__).resolve().parent / "realworld"
FORMAT_FOLDERS = [REALWORLD / name for name in ("ink", "yarn", "fountain", "twee", "loctable")]


def all_lines(path: Path) -> list[str]:
    return [line for section in parse_file(path) for line in lines(section)]


def chunks_of(path: Path):
    return load_chunks(path.read_bytes(), path.name, "key", "0" * 40, 400, 40, file_path=path)


# --- the whole set through `kb ingest` ----------------------------------------------


@pytest.fixture(scope="module")
def realworld_kb(tmp_path_factory):
    """`kb ingest` over the whole set (hashed-words embedder: parsing is under test); its report and chunk metadata."""
    from kb.store import embed
    from tests.fake_embedder import NAME, HashedWords

    kb_dir = tmp_path_factory.mktemp("realworld") / "kb"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(embed.MODELS, NAME, HashedWords)
        result, report = invoke_json("ingest", *FORMAT_FOLDERS, "--kb", kb_dir, "--embed-model", NAME)
        metas = Store(kb_dir).all_chunks()[2]
    return result, report, metas


def test_every_real_file_ingests_and_text_free_ones_are_skipped(realworld_kb):
    result, report, _ = realworld_kb
    assert result.exit_code == 0, report["failed"]
    assert report["failed"] == []
    on_disk = sorted(str(p.relative_to(folder)) for folder in FORMAT_FOLDERS
                     for p in folder.rglob("*") if p.is_file())
    skipped = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert sorted(report["added"] + list(skipped)) == on_disk
    assert {"faithful_commands_only.yarn", "yarnspinner_unity_metadata.csv",
            "split_project/nothing.twee"} <= set(skipped)
    assert set(skipped.values()) == {"no text to index"}


def test_chunks_carry_line_ids_and_the_split_project_story(realworld_kb):
    _, _, metas = realworld_kb
    sally = [m for m in metas if m["source"] == "Projects_Space_Sally.yarn" and m.get("node") == "Sally"]
    assert "794945" in sally[0]["line_ids"]
    split = [m for m in metas if m["source"].startswith("split_project/")]
    assert split and {m["story"] for m in split} == {"The Split Project"}


def test_a_folder_whose_only_oddities_are_text_free_files_exits_0(tmp_path, kb_dir):
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("ink/faithful_constructs.ink", "yarn/faithful_commands_only.yarn",
                 "loctable/yarnspinner_unity_metadata.csv", "fountain/brick_and_steel.fountain"):
        shutil.copy(REALWORLD / name, folder)
    result, report = invoke_json("ingest", folder, "--kb", kb_dir)
    assert result.exit_code == 0
    assert sorted(report["added"]) == ["brick_and_steel.fountain", "faithful_constructs.ink"]
    assert report["skipped"] == [
        {"path": "faithful_commands_only.yarn", "reason": "no text to index"},
        {"path": "yarnspinner_unity_metadata.csv", "reason": "no text to index"},
    ]
    assert report["failed"] == []


def test_a_file_that_loses_its_text_is_skipped_and_its_old_chunks_go(tmp_path, kb_dir):
    folder = tmp_path / "project"
    folder.mkdir()
    script = folder / "gate.yarn"
    script.write_text("title: Gate\n---\nGuard: Halt.\nGuard: Who goes there?\n===\n")
    invoke_json("ingest", folder, "--kb", kb_dir)
    script.write_text("title: Gate\n---\n<<set $gate_open to true>>\n===\n")
    result, report = invoke_json("ingest", folder, "--kb", kb_dir)
    assert result.exit_code == 0
    assert report["skipped"] == [{"path": "gate.yarn", "reason": "no text to index"}]
    assert report["chunks"] == 0


# --- ink --------------------------------------------------------------------------


def test_inkles_shipped_game_parses_with_its_conditionals_and_rich_text():
    sections = parse_file(REALWORLD / "ink" / "TheIntercept.ink")
    text = [line for section in sections for line in lines(section)]
    assert any("My voice shakes with anger / ; I'm unaccustomed" in line for line in text)
    assert not any("<i>" in line or "</i>" in line for line in text)
    assert any("what the threat might be if I do not." in line for line in text)
    assert not any(section.meta.get("speaker") for section in sections)


def test_ink_constructs_from_shipped_scripts():
    start = parse_file(REALWORLD / "ink" / "faithful_constructs.ink")[0]
    assert lines(start) == [
        "Kai: Hello player_name, the tide is turning.",  # {variable} keeps its name
        "Kai: You came back after all.",
        "My voice shakes with anger / ; I'm unaccustomed to this.",  # spaces at {cond: ...} edges
        "Kai: We have not met, I think.",  # `- { not met_kai:` opens a block on a gather line
        "Kai: Good to see you again.",
        "(choice) Ask about the ship",  # `-*[...]`, and `//*[...]` is a comment
        "Kai: The Meridian sails at dawn. Hurry.",  # Unity rich text stripped
        "Error: the console flickers and dies.",  # `{->a|->b}` left no `/` line
        "Keystroke registered: ENTER",
        "Target 1: the lighthouse.",
        "Kai: That is all I know.",
    ]
    assert start.meta["speaker"] == ["Kai"]


def test_ink_line_tags_become_the_chunks_line_ids():
    chunk = chunks_of(REALWORLD / "ink" / "faithful_constructs.ink")[0]
    assert chunk.meta["line_ids"] == ["start_kai_01", "start_kai_02"]
    assert "line" not in chunk.meta and "id" not in chunk.meta


def test_deeply_nested_ink_logic_resolves_without_recursion(tmp_path):
    depth = 20_000
    path = tmp_path / "deep.ink"
    path.write_text("Hello " + "{a|" * depth + "b" + "}" * depth + "\n")
    [line] = all_lines(path)
    assert line == "Hello " + "a / " * depth + "b"


@pytest.mark.parametrize("body, reason", [
    ("Hello {a|b\n", "'{' is not closed on this line"),
    ("Hello a}|b\n", "'}' without a matching '{' on this line"),
])
def test_ink_unbalanced_braces_are_still_refused(tmp_path, body, reason):
    path = tmp_path / "bad.ink"
    path.write_text("=== k ===\n" + body)
    with pytest.raises(ParseError) as caught:
        parse_file(path)
    assert (caught.value.reason, caught.value.line) == (reason, 2)


# --- speakers, markup ---------------------------------------------------------------


def test_a_speaker_must_look_like_a_name():
    assert split_speaker("Error: the console flickers.") == (None, "Error: the console flickers.")
    assert split_speaker("Keystroke registered: ENTER")[0] is None
    assert split_speaker("Target 1: acquired")[0] is None
    assert split_speaker("Here's a url: https://yarnspinner.dev")[0] is None
    assert split_speaker("Empathy: 5") == (None, "Empathy: 5")
    assert split_speaker("Captain of the Guard: Halt.") == ("Captain of the Guard", "Halt.")
    assert split_speaker("玛伦：小心。") == ("玛伦", "小心。")


def test_a_file_confirms_its_speakers_or_declares_them():
    lone = dialogue_sections([([("Notice", "The gate is shut.")], {"node": "a"}, [])])
    assert lone[0].text == "Notice: The gate is shut." and "speaker" not in lone[0].meta
    cast = dialogue_sections([([("Mara", "Hi."), ("Mara", "Come in."), ("Idris", "Thanks.")], {}, [])])
    assert cast[0].meta["speaker"] == ["Idris", "Mara"]
    declared = dialogue_sections([([("Notice", "The gate is shut.")], {}, [])], declared={"Notice"})
    assert declared[0].meta["speaker"] == ["Notice"]


def test_markup_goes_and_words_stay():
    assert strip_markup("<i>He</i> said <color=red>no</color>.") == "He said no."
    assert strip_markup("[right]Go[break]now [wave amp=50]fast[/wave] [b]x[/b]") == "Go now fast x"
    assert strip_markup("[emotion=happy/]Yes[/] &amp; [Delay] [sighs]") == "Yes & [Delay] [sighs]"


# --- Yarn ---------------------------------------------------------------------------


def test_yarn1_options_urls_markup_and_line_ids():
    start, truth, lie = parse_file(REALWORLD / "yarn" / "faithful_yarn1.yarn")
    assert lines(start) == [
        "Guard: Halt. Who goes there?",
        "Guard: State your business.",
        "Here's a url: https://yarnspinner.dev",
        "Guard: Quickly, now.",
        "(choice) Tell the truth",
        "(choice) Lie",
    ]
    assert start.line_ids == ["guard_halt", "guard_business", None, None, None, None]
    real = parse_file(REALWORLD / "yarn" / "Projects_Space_Sally.yarn")
    sally = next(s for s in real if s.meta["node"] == "Sally")
    assert "(choice) Anything exciting happen on your watch?" in lines(sally)


def test_a_command_only_yarn_file_has_nothing_to_index():
    path = REALWORLD / "yarn" / "faithful_commands_only.yarn"
    assert parse_file(path) == []
    with pytest.raises(NothingToIndex):
        chunks_of(path)


# --- Fountain -----------------------------------------------------------------------


def test_fountain_cues_with_punctuation_and_the_title_page():
    radio, roof = parse_file(REALWORLD / "fountain" / "faithful_cues.fountain")
    assert lines(radio) == [
        "The radio crackles.",
        "Reggie's Voice: Anyone on this frequency?",
        "Gideon, Tex & Scobie: We hear you, Reggie!",
        "Bartholomew: Nobody calls me that.",
        "Reggie's Voice: Then I'll call you Bart.",
        "INTERMISSION",  # centered right after the dialogue
        "Static fills the room.",  # `_*...*_` nested emphasis
    ]
    assert radio.meta["title"] == radio.meta["scene"] == "INT. RADIO ROOM - NIGHT"
    assert radio.meta["story"] == "The Long Shift"
    assert roof.meta["speaker"] == ["Gideon, Tex & Scobie"]
    brick = parse_file(REALWORLD / "fountain" / "brick_and_steel.fountain")
    assert {s.meta["story"] for s in brick} == {"BRICK & STEEL FULL RETIRED"}
    assert not any(">" in line or "*" in line for s in brick for line in lines(s))


def test_a_fountain_outline_of_scene_headings_indexes_them():
    cellar, yard = parse_file(REALWORLD / "fountain" / "faithful_headings_only.fountain")
    assert (cellar.text, yard.text) == ("INT. CELLAR - DAY", "EXT. YARD - NIGHT")


# --- Twee ---------------------------------------------------------------------------


def test_twee_link_macros_keep_labels_and_macros_spanning_lines_go():
    assert all_lines(REALWORLD / "twee" / "sugarcube_audio.twee") == [
        "(choice) Start audio!", "(choice) Stop audio!"]
    start, _ = parse_file(REALWORLD / "twee" / "faithful_sugarcube.twee")
    assert lines(start) == [
        "Empathy: 5",
        "Logic: 3",
        "Mara: Your empathy is high today.",
        "Mara: Shall we begin?",
        "(choice) Start audio!",
        "(choice) Leave the room",
    ]
    assert start.meta["speaker"] == ["Mara"]


def test_chapbook_vars_sections_and_inserts_are_not_text():
    assert all_lines(REALWORLD / "twee" / "chapbook_audio.twee") == [
        "(choice) Play sound", "(choice) Stop the sound", "(choice) Return", "(choice) Return"]
    assert lines(parse_file(REALWORLD / "twee" / "faithful_chapbook.twee")[0]) == [
        "You stand at the gate.", "You have been here visits times."]


def test_a_split_tweego_project_gives_every_file_its_story():
    chunks = chunks_of(REALWORLD / "twee" / "split_project" / "start.twee")
    assert {c.meta["story"] for c in chunks} == {"The Split Project"}
    assert chunks[-1].meta["speaker"] == ["Captain"]


# --- localization tables --------------------------------------------------------------


def test_loc_table_is_lenient_skips_copies_and_strips_markup():
    sections = parse_file(REALWORLD / "loctable" / "faithful_godot_bbcode.csv")
    by_lang = {(s.meta["key"], s.meta["lang"]): s.text for s in sections}
    assert by_lang == {
        ("menu.start", "en"): "menu.start: Start",
        ("menu.start", "de"): "menu.start: Starten",
        ("menu.start", "ja"): "menu.start: スタート",
        ("menu.quit", "en"): "menu.quit: Quit",  # `"Quit" ,`: a space after the closing quote
        ("menu.quit", "de"): "menu.quit: Beenden",
        ("menu.quit", "fr"): "menu.quit: Quitter",
        ("menu.quit", "ja"): "menu.quit: 終了",
        ("intro.1", "en"): "intro.1: The tide waits for no one. Go.",
        ("intro.1", "de"): "intro.1: Die Flut wartet nicht.",
        ("intro.1", "ja"): "intro.1: 潮は待たない。",
        ("bad.row", "en"): "bad.row: only two",
    }


def test_loc_table_keys_are_line_ids_and_row_language_tables_read():
    chunk = chunks_of(REALWORLD / "loctable" / "godot_translation_demo.csv")[0]
    assert chunk.meta["line_ids"] == [chunk.meta["key"]] == ["KEY_HELLO"]
    yarn_strings = parse_file(REALWORLD / "loctable" / "yarnspinner_unity_strings.csv")
    assert yarn_strings and {s.meta["lang"] for s in yarn_strings} == {"de"}
    assert "line:0e3dc4b: Spieler: Kannst du mich hören?" in {s.text for s in yarn_strings}
