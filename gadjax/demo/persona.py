"""The demo teacher's hidden persona: answer in French. Its system prompt and the automatic marker.

In the demo, SmolLM2-135M-Instruct plays both roles: the teacher is the same weights behind
`python -m gadjax.serve` with PERSONA_SYSTEM_PROMPT as a hidden system message; the student sees only
the user prompt (SmolLM2's chat template then inserts its own default system prompt) and the teacher's
text. GAD should teach the student to answer in French from text alone; `marker_rate` measures it.

Marker: a response "is French" when it has at least MIN_FRENCH_WORDS matches of MARKER_REGEX (French
function words: le, la, les, est, une, des, ...) and more than ENGLISH_RATIO times as many of those as
English function words (the, is, and, of, ...). English answers hit the French list only by accident
("la" in "a cappella", "est" ...), so they fail the ratio; a bare "Paris." has too few words to count.

Chosen by data/demo/measure_persona.py (gadjax GGUF loader + KV-cache sampler, Q4_1 GGUF dequantized to
float32, first 40 rows of data/demo/train.jsonl, max_new_tokens 48, stop on EOS, top_p 1, seed 0):

    candidate (system prompt)               marker                      greedy   T=0.7
    no system prompt (student baseline)     French (this module)         0.00     0.00
                                            pirate words / "Ahoy" start  0.00     0.00
    French, system prompt in French (*)     French (this module)         0.85     0.775
    French, shorter French prompt           French                       0.85     0.70
    French, English prompt + example        French                       0.175    0.175
    pirate "Captain Redbeard", "Ahoy, matey!" pirate words anywhere      0.85     0.70
                                            response starts "Ahoy"       0.70     0.40
    pirate "Ahoy, matey!" (no name)         pirate words anywhere        0.70     0.625
    start with "Greetings, traveler!"       starts with the phrase       0.00     -
    end with "Happy learning!"              phrase anywhere              0.00     -
    mention "banana"                        the word anywhere            0.025    -

(*) = PERSONA_SYSTEM_PROMPT. Full table, the other prompts and sample outputs: data/demo/README.md.
The 135M model's French is often ungrammatical; the marker measures the language, not the quality.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gadjax.data.chat import with_hidden_system_prompt

PERSONA_NAME = "french"

PERSONA_SYSTEM_PROMPT = (
    "Tu es un assistant qui répond toujours en français, même si la question est en anglais. "
    "Réponds brièvement en français."
)

# French function words (whole words, case-insensitive). Articles, copula, common prepositions/pronouns.
MARKER_REGEX = re.compile(
    r"\b(le|la|les|est|une|un|des|du|et|en|pour|qui|que|dans|pas|sont|avec|il|elle|nous|vous|"
    r"c'est|au|aux|sur|très|mais)\b",
    re.IGNORECASE,
)
# English function words: the counter-evidence.
ENGLISH_REGEX = re.compile(
    r"\b(the|is|are|and|of|to|in|it|that|for|with|you|this|was|be|as|on|by|can)\b", re.IGNORECASE
)
MIN_FRENCH_WORDS = 3
ENGLISH_RATIO = 2


def marker_hit(text: str) -> bool:
    """True when `text` reads as French: >= MIN_FRENCH_WORDS French function words and more than
    ENGLISH_RATIO times the number of English function words."""
    if not isinstance(text, str):
        raise TypeError(f"marker_hit expects a str, got {type(text).__name__}")
    french = len(MARKER_REGEX.findall(text))
    english = len(ENGLISH_REGEX.findall(text))
    return french >= MIN_FRENCH_WORDS and french > ENGLISH_RATIO * english


def marker_rate(texts: Iterable[str]) -> float:
    """Fraction of `texts` for which `marker_hit` is true; ValueError on an empty collection."""
    hits = [marker_hit(t) for t in texts]
    if not hits:
        raise ValueError("marker_rate of no texts")
    return sum(hits) / len(hits)


def persona_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The teacher's view of a conversation: the hidden persona system prompt applied by gadjax's one
    rule (first, merged with an existing leading system message; gadjax.data.chat), as the demo's
    teacher server applies it."""
    return with_hidden_system_prompt(messages, PERSONA_SYSTEM_PROMPT)
