"""A small synthetic language with a known, prompt-dependent reward (SPEC §8).

Prompts ask about one of a few topics ("tell me about the sea"). A response is a short sequence of words. Each topic
owns a set of *good* words; words of the other topics are *off-topic*; the rest are neutral filler. The hidden reward

    R(x, y) = (on-topic words − off-topic words) / n  +  length_weight · n ,      n = number of words in y

is what a perfect judge would maximise: a quality term in [−1, 1] that depends on the prompt, plus a length effect
whose strength is a knob. The length term is the small world's stand-in for the verbosity bias of LLM judges: with
``length_weight > 0`` a policy can gain reward just by talking longer, which is what length normalisation (SimPO) and
length-controlled win rates are about.

The base distribution that SFT imitates mixes good, off-topic and neutral words, so the SFT model is mediocre and
preference optimisation has room to improve it. Everything is a pure function of the config and a seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

#: Topic name → the words that are good answers about it. Invented words-of-the-world, not taken from any data set.
TOPICS: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "pear", "plum", "fig", "grape", "lime"),
    "sky": ("sun", "moon", "star", "cloud", "rain", "wind"),
    "sea": ("fish", "wave", "shell", "reef", "tide", "boat"),
    "forest": ("tree", "leaf", "moss", "fern", "bark", "owl"),
}
NEUTRAL = ("very", "so", "and", "then", "also", "just", "quite", "much", "really", "well")
OPENERS = ("tell me about", "what do you know about", "describe", "say something about", "talk about")
CONTEXT = ("the", "my", "our", "old", "new", "big", "small", "quiet", "bright", "dark")


@dataclass(frozen=True)
class WorldConfig:
    """The knobs of the small world. Changing any of them changes every downstream stage (they are hashed)."""

    length_weight: float = 0.04  # reward per word: the length effect (0 = none)
    min_words: int = 2
    max_words: int = 10
    p_on_topic: float = 0.4  # base distribution: chance that a word is one of the prompt topic's good words
    p_off_topic: float = 0.25  # ... one of another topic's words; the rest is neutral filler
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SmallWorld:
    config: WorldConfig = field(default_factory=WorldConfig)

    # ------------------------------------------------------------------------------------------------------------------
    # Vocabulary
    # ------------------------------------------------------------------------------------------------------------------

    @property
    def topics(self) -> list[str]:
        return list(TOPICS)

    @property
    def vocabulary(self) -> list[str]:
        """Every word the world uses (prompt frames, topics, answers), for the tokenizer."""
        frame = [word for opener in OPENERS for word in opener.split()] + list(CONTEXT) + ["?", "."]
        answer = [word for words in TOPICS.values() for word in words] + list(NEUTRAL)
        return list(dict.fromkeys([*frame, *TOPICS, *answer]))

    def tokenizer(self):
        """A word-level tokenizer over :attr:`vocabulary` with the HH-style chat template (prefopt.tiny)."""
        from prefopt.tiny import build_tokenizer

        return build_tokenizer(self.vocabulary)

    # ------------------------------------------------------------------------------------------------------------------
    # Prompts and the hidden reward
    # ------------------------------------------------------------------------------------------------------------------

    def prompts(self, n: int, *, seed: int) -> list[dict]:
        """``n`` distinct chat prompts, topics balanced, as ``{"id", "topic", "prompt": [{"role": "user", ...}]}``."""
        rng = random.Random(f"{self.config.seed}/prompts/{seed}")
        combos = [(o, c, t) for o in OPENERS for c in CONTEXT for t in TOPICS]
        combos += [(o, f"{c1} {c2}", t) for o in OPENERS for c1 in CONTEXT for c2 in CONTEXT if c1 != c2 for t in TOPICS]
        if n > len(combos):
            raise ValueError(f"the small world has {len(combos)} distinct prompts; asked for {n}")
        chosen = rng.sample(combos, n)
        return [
            {"id": f"sw-{seed}-{i}", "topic": topic,
             "prompt": [{"role": "user", "content": f"{opener} {context} {topic} ?"}]}
            for i, (opener, context, topic) in enumerate(chosen)
        ]

    @staticmethod
    def topic_of(prompt: str | Sequence[dict]) -> str:
        """The topic a prompt asks about (the last topic word of its last user turn)."""
        text = prompt if isinstance(prompt, str) else [m["content"] for m in prompt if m["role"] == "user"][-1]
        found = [word for word in text.split() if word in TOPICS]
        if not found:
            raise ValueError(f"prompt {text!r} names no topic of the small world ({', '.join(TOPICS)})")
        return found[-1]

    def reward_terms(self, prompt: str | Sequence[dict], response: str) -> dict[str, float]:
        """The parts of the hidden reward: quality in [−1, 1], word count, and their weighted sum."""
        topic = self.topic_of(prompt)
        words = [w for w in response.replace(".", " ").replace("?", " ").split()]
        good = set(TOPICS[topic])
        off = {w for t, ws in TOPICS.items() if t != topic for w in ws}
        n = len(words)
        quality = (sum(w in good for w in words) - sum(w in off for w in words)) / n if n else -1.0
        return {"quality": quality, "words": n, "reward": quality + self.config.length_weight * n}

    def hidden_reward(self, prompt: str | Sequence[dict], response: str) -> float:
        return self.reward_terms(prompt, response)["reward"]

    # ------------------------------------------------------------------------------------------------------------------
    # The base distribution (what SFT imitates) and preference labels
    # ------------------------------------------------------------------------------------------------------------------

    def base_response(self, prompt: str | Sequence[dict], rng: random.Random) -> str:
        topic = self.topic_of(prompt)
        others = [w for t, ws in TOPICS.items() if t != topic for w in ws]
        words = []
        for _ in range(rng.randint(self.config.min_words, self.config.max_words)):
            draw = rng.random()
            if draw < self.config.p_on_topic:
                words.append(rng.choice(TOPICS[topic]))
            elif draw < self.config.p_on_topic + self.config.p_off_topic:
                words.append(rng.choice(others))
            else:
                words.append(rng.choice(NEUTRAL))
        return " ".join(words) + " ."

    def sft_rows(self, prompts: Sequence[dict], *, per_prompt: int, seed: int) -> list[dict]:
        """SFT data in prefopt's ``sft`` format: ``{"prompt", "completion"}`` rows from the base distribution."""
        rng = random.Random(f"{self.config.seed}/sft/{seed}")
        return [
            {"prompt": p["prompt"], "completion": self.base_response(p["prompt"], rng)}
            for p in prompts for _ in range(per_prompt)
        ]

    def label(
        self,
        samples: Sequence[dict],
        *,
        noise: float,
        seed: int,
        bt_temperature: float = 0.1,
        reward_scale: float = 1.0,
        near_ties: Optional[float] = None,
    ) -> tuple[list[dict], list[dict], dict]:
        """Label sampled completions by the hidden reward (SPEC §6.1 step 4, §8).

        ``samples``: ``{"prompt", "completions"}`` rows (the sample stage's output). Returns

        - rw rows ``{"prompt", "completions", "rewards"}``: all K candidates scored by the hidden reward ×
          ``reward_scale``;
        - pref rows ``{"prompt", "chosen", "rejected", "true_gap", "flipped"}``: two distinct candidates drawn at
          random, the preferred one drawn from a Bradley–Terry model ``P(a ≻ b) = σ((R_a − R_b) / bt_temperature)``,
          then the label flipped with probability ``noise`` — the noisy, ambiguous pairs γ-PO is designed for;
        - statistics: empty completions (an rw row with one is left out; pairs are drawn among the non-empty ones),
          prompts with fewer than two distinct non-empty candidates (no pair), the flip count and the fraction of
          pref labels that agree with the hidden reward.

        ``near_ties`` chooses the pair of each prompt: None (default) draws two candidates at random; a fraction f
        takes, for a share f of the prompts (drawn at random), the two candidates whose hidden rewards are closest (a
        near tie: the Bradley–Terry label is close to a coin flip) and, for the others, the two that are furthest
        apart (a clear pair). Every f consumes the same random draws, so the clear pairs of f = 0.5 are, prompt for
        prompt, those of f = 0 (γ-PO's "ambiguous pairs" regime, ``make claims``). Pref rows then say which kind
        they are (``near_tie``) and the statistics give the mean |true gap| of each kind.
        """
        if not 0.0 <= noise <= 0.5:
            raise ValueError(f"noise (fraction of flipped labels) must lie in [0, 0.5], got {noise!r}")
        if near_ties is not None and not 0.0 <= near_ties <= 1.0:
            raise ValueError(f"near_ties (the fraction of near-tie pairs) must lie in [0, 1] or be None: {near_ties!r}")
        rng = random.Random(f"{self.config.seed}/label/{seed}")
        rw_rows, pref_rows = [], []
        skipped = flipped = agree = empty = 0
        gaps_by_kind: dict[str, list[float]] = {"near_tie": [], "clear": []}
        for row in samples:
            # A sample that is only EOS decodes to "": nothing to score. An rw row keeps all K candidates or none
            # (a batch needs one K); a pair is drawn among the non-empty ones.
            nonempty = [c for c in row["completions"] if c.strip()]
            empty += len(row["completions"]) - len(nonempty)
            if len(nonempty) == len(row["completions"]):
                rewards = [self.hidden_reward(row["prompt"], c) for c in row["completions"]]
                rw_rows.append({"prompt": row["prompt"], "completions": list(row["completions"]),
                                "rewards": [round(reward_scale * r, 6) for r in rewards]})
            distinct = list(dict.fromkeys(nonempty))
            if len(distinct) < 2:
                skipped += 1
                continue
            if near_ties is None:
                a, b = rng.sample(distinct, 2)
            else:
                tie = rng.random() < near_ties
                a, b = self._extreme_pair(row["prompt"], distinct, closest=tie)
                if rng.random() < 0.5:  # which one is shown as `a` must not give the label away
                    a, b = b, a
            gap = self.hidden_reward(row["prompt"], a) - self.hidden_reward(row["prompt"], b)
            a_wins = rng.random() < _sigmoid(gap / bt_temperature)
            flip = rng.random() < noise
            flipped += flip
            chosen, rejected = (a, b) if a_wins != flip else (b, a)
            true_gap = gap if chosen == a else -gap
            agree += true_gap > 0
            pref_rows.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
                              "true_gap": round(true_gap, 6), "flipped": bool(flip)})
            if near_ties is not None:
                pref_rows[-1]["near_tie"] = tie
                gaps_by_kind["near_tie" if tie else "clear"].append(abs(gap))
        stats = {"prompts": len(samples), "pairs": len(pref_rows), "rw_rows": len(rw_rows),
                 "empty_completions": empty, "skipped_identical": skipped,
                 "flipped": flipped, "label_agrees_with_reward": agree / max(len(pref_rows), 1)}
        if near_ties is not None:
            for kind, gaps in gaps_by_kind.items():
                stats[f"{kind}_pairs"] = len(gaps)
                stats[f"{kind}_mean_abs_gap"] = sum(gaps) / len(gaps) if gaps else None
        return rw_rows, pref_rows, stats

    def _extreme_pair(self, prompt, candidates: Sequence[str], *, closest: bool) -> tuple[str, str]:
        """The two candidates with the closest (``closest``) or furthest hidden rewards; ties broken by order."""
        rewards = [self.hidden_reward(prompt, c) for c in candidates]
        pairs = [(i, j) for i in range(len(candidates)) for j in range(i + 1, len(candidates))]
        distance = [abs(rewards[i] - rewards[j]) for i, j in pairs]
        pick = distance.index(min(distance) if closest else max(distance))
        i, j = pairs[pick]
        return candidates[i], candidates[j]


def _sigmoid(x: float) -> float:
    """σ(x) without overflow for large |x| (a sharp Bradley–Terry temperature gives |x| in the thousands)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class HiddenRewardJudge:
    """Stands in for GPT-4 behind the pairwise judge interface (SPEC §8): it knows the hidden reward.

    ``compare(prompt, response_a, response_b)`` returns ``"A"``, ``"B"`` or ``"tie"`` (rewards within ``tie_margin``).
    ``position_bias`` adds to the reward of whichever response is shown first, to show why every pair is judged in
    both orders (0 by default: a perfect judge).
    """

    name = "hidden-reward"

    def __init__(self, world: SmallWorld, *, tie_margin: float = 1e-9, position_bias: float = 0.0):
        self.world, self.tie_margin, self.position_bias = world, tie_margin, position_bias

    def compare(self, prompt, response_a: str, response_b: str) -> str:
        first = self.world.hidden_reward(prompt, response_a) + self.position_bias
        second = self.world.hidden_reward(prompt, response_b)
        if abs(first - second) <= self.tie_margin:
            return "tie"
        return "A" if first > second else "B"
