"""Game state per request: the chapter, region and quest flags the player has reached.

A state only ever narrows what an NPC's card allows. The card is the ceiling
(`knows: {chapter: 3, region: [Fellstack, Saltreach]}`): a state may ask for
chapter 2 or region Fellstack, but a state that asks for chapter 4 or region
Mirewood is refused, never quietly widened or clipped. Flags unlock canon that
declares `requires:` (stored as `requires_flags`): a chunk is shown only when
every flag it requires is set.

    {"chapter": 2, "region": "Saltreach", "flags": {"met_sefa": true}}
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.cards import Card
from ingest.meta import coerce, meta_key
from kb.errors import Forbidden, KBError
from kb.limits import requirements_met, within_limits

FLAGS = "flags"


class InvalidState(KBError):
    """A game state that is not a mapping of plain values and flags."""

    http_status = 400
    code = "invalid_state"


class StateBeyondCard(Forbidden):
    """A game state that would let an NPC know more than its card allows."""

    code = "state_beyond_card"


@dataclass(frozen=True)
class Visibility:
    """What one request may see: metadata limits (as `within_limits` reads them) and the flags set.

    ``flags`` is None when nothing is gated by flags (a writer's `kb ask` with no
    state sees canon whatever it requires); an NPC always has a set, maybe empty.
    ``strict``: canon without a limited key is hidden too (a card's `unknown: hidden`).
    """

    limits: dict
    flags: frozenset[str] | None
    strict: bool = False

    def allows(self, meta: dict) -> bool:
        """This chunk (by its metadata) is within the limits and its required flags are set."""
        return within_limits(meta, self.limits, self.strict) and requirements_met(meta, self.flags)


def _plain(value) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def check_state(state: dict | None) -> dict:
    """The state with values coerced ('2' -> 2) and flags as a mapping of name to bool.

    Raises:
        InvalidState: not a mapping, a value that is not plain, or flags that are not name: bool.
    """
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise InvalidState("state must be a mapping like {\"chapter\": 2, \"flags\": {\"met_sefa\": true}}")
    checked: dict = {}
    for key, value in state.items():
        key = meta_key(key)
        if key == FLAGS:
            flags = {name: True for name in value} if isinstance(value, list) else value
            if not isinstance(flags, dict) or not all(isinstance(n, str) and isinstance(v, bool)
                                                      for n, v in flags.items()):
                raise InvalidState("state.flags must map flag names to true or false")
            checked[FLAGS] = flags
        elif _plain(value):
            checked[key] = coerce(value)
        elif isinstance(value, list) and value and all(_plain(v) for v in value):
            checked[key] = [coerce(v) for v in value]
        else:
            raise InvalidState(f"state.{key} must be a value or a non-empty list of values")
    return checked


def state_from_pairs(pairs: tuple[str, ...] | list[str]) -> dict:
    """A state from `--state KEY=VALUE` options: `chapter=2`, `region=Saltreach`, `flag=met_sefa`,
    `flags.met_sefa=false`; a key given twice becomes a list.

    Raises:
        InvalidState: an option that is not KEY=VALUE.
    """
    state: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise InvalidState(f"--state '{pair}' is not KEY=VALUE (e.g. chapter=2 or flag=met_sefa)")
        if key == "flag":
            state.setdefault(FLAGS, {})[value] = True
        elif key.startswith(f"{FLAGS}."):
            state.setdefault(FLAGS, {})[key[len(FLAGS) + 1:]] = value.lower() in ("1", "true", "yes", "on")
        elif key in state:
            previous = state[key] if isinstance(state[key], list) else [state[key]]
            state[key] = [*previous, coerce(value)]
        else:
            state[key] = coerce(value)
    return check_state(state)


def _narrow(key: str, ceiling, wanted, who: str):
    """One state value within the card's limit for that key, or StateBeyondCard."""
    wanted_values = wanted if isinstance(wanted, list) else [wanted]
    if isinstance(ceiling, (int, float)):
        if not all(isinstance(v, (int, float)) and v <= ceiling for v in wanted_values):
            raise StateBeyondCard(f"state {key}={wanted} is beyond {who}'s card ({key} at most {ceiling}); "
                                  "a state can only narrow what the card allows")
        return min(wanted_values)
    allowed = {str(v) for v in (ceiling if isinstance(ceiling, list) else [ceiling])}
    outside = [v for v in wanted_values if str(v) not in allowed]
    if outside:
        raise StateBeyondCard(f"state {key}={outside[0]} is beyond {who}'s card ({key} in "
                              f"{sorted(allowed)}); a state can only narrow what the card allows")
    return wanted


def visibility(card_limits: dict, state: dict | None, who: str = "this NPC", gate_flags: bool = True,
               strict: bool = False) -> Visibility:
    """What a request with ``state`` may see under a card's limits (``{}``: no card, no ceiling).

    ``gate_flags`` False (a writer's question with no state) leaves `requires:` canon visible;
    ``strict`` hides canon without a limited key.

    Raises:
        InvalidState: the state is malformed.
        StateBeyondCard: the state asks for more than the card allows.
    """
    state = check_state(state)
    limits = dict(card_limits)
    for key, wanted in state.items():
        if key == FLAGS:
            continue
        limits[key] = _narrow(key, card_limits[key], wanted, who) if key in card_limits else wanted
    flags = state.get(FLAGS, {})
    gated = gate_flags or bool(state)
    return Visibility(limits, frozenset(n for n, on in flags.items() if on) if gated else None, strict)


def card_visibility(card: Card, state: dict | None) -> Visibility:
    """What an NPC may see in ``state``: its card's `knows` (strict with `unknown: hidden`), narrowed by the state.

    Raises:
        InvalidState: the state is malformed.
        StateBeyondCard: the state asks for more than the card allows.
    """
    return visibility(card.knows, state, card.name, strict=card.strict)
