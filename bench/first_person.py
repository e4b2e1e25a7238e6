"""How often the first-person rule (kb/in_character.py) gets a sentence wrong, on hand-labelled sentences.

Every sentence of the sample world's canon (English and Chinese) that names
one of the three NPCs, and every sentence opening with a pronoun in a chunk
that names one (in its text or heading), is run through the rule as that NPC
would speak it, with its chunk as the context the rule reads (as an answer
quoting that chunk gives it). Each result is labelled by hand in
bench/first_person_labels.jsonl: "ok" when the rendering is right (rendered
correctly, or correctly left in the third person), "wrong" when it is wrong
(bad grammar, the wrong person made "I"), and "missed" for a sentence the NPC
should have said as "I" left alone. The file also keeps the labels of the
earlier rule's renderings, so that rule can be scored on the same sentences.
A rendering that no longer matches its label is reported as
unlabelled, so a change to the rule shows up here.

    python bench/first_person.py [--kb DIR] [--dump]   # --dump: print renderings to label
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from kb.api import KnowledgeBase  # noqa: E402
from kb.extract import analysed  # noqa: E402
from kb.in_character import first_person, npc_names, npc_pronouns  # noqa: E402
from kb.npc import speakers  # noqa: E402

LABELS = Path(__file__).with_name("first_person_labels.jsonl")
_PRONOUN_LED = re.compile(r"^(?:She|He|Her|His)\b")


def renderings(kb: KnowledgeBase) -> list[dict]:
    """Each (NPC, canon sentence naming them or leaning on a chunk that does) with the rule's rendering;
    sentences, not lines of dialogue."""
    corpus = kb.corpus
    rows = []
    for card in kb.npcs().values():
        names = npc_names(card)
        others = {s for s in speakers(corpus) if s not in names and s not in card.name.split()}
        named = re.compile("|".join(rf"\b{re.escape(n)}\b" for n in names))
        seen = set()
        for _, text, meta in corpus.chunks():
            title = meta.get("title", "")
            if "speaker" in meta or not named.search(f"{title}\n{text}"):
                continue
            for found, _ in analysed(text):
                sentence = " ".join(text[found.start:found.end].split())
                if (named.search(sentence) or _PRONOUN_LED.match(sentence)) and sentence not in seen:
                    seen.add(sentence)
                    rendered = first_person(f"{sentence} [1]", names, others, {1: (text, title)},
                                            npc_pronouns(card))[:-4]
                    rows.append({"npc": card.name, "sentence": sentence, "rendered": rendered,
                                 "changed": rendered != sentence})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, default=Path(".kb"))
    parser.add_argument("--dump", action="store_true")
    args = parser.parse_args()
    rows = renderings(KnowledgeBase.open(args.kb))
    if args.dump:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    labels = {(r["npc"], r["sentence"], r["rendered"]): r["label"]
              for r in map(json.loads, LABELS.read_text(encoding="utf-8").splitlines()) if r}
    counts: dict[str, int] = {}
    for row in rows:
        label = labels.get((row["npc"], row["sentence"], row["rendered"]), "unlabelled")
        key = f"{'rendered' if row['changed'] else 'left'}:{label}"
        counts[key] = counts.get(key, 0) + 1
    rendered = sum(v for k, v in counts.items() if k.startswith("rendered"))
    wrong = counts.get("rendered:wrong", 0)
    print(f"{len(rows)} canon sentences name an NPC; {rendered} rendered in the first person, "
          f"{wrong} of them wrong ({wrong / rendered:.0%}); left in the third person: "
          f"{counts.get('left:ok', 0)} rightly, {counts.get('left:missed', 0)} missed; "
          f"{sum(v for k, v in counts.items() if k.endswith('unlabelled'))} unlabelled")
    print(json.dumps(counts, sort_keys=True))


if __name__ == "__main__":
    main()
