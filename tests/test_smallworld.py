"""The small world's hidden reward, labels and judge (SPEC §8), checked against values worked out by hand."""

import math
import random

import pytest

from prefopt.smallworld.world import TOPICS, HiddenRewardJudge, SmallWorld, WorldConfig
from prefopt.winrate import judge_both_orders, mean_and_ci, win_rate

SKY = [{"role": "user", "content": "describe the sky ?"}]


def test_hidden_reward_known_values():
    world = SmallWorld(WorldConfig(length_weight=0.04))
    # sky words: sun, moon (good); fish (sea: off-topic); "very" neutral
    terms = world.reward_terms(SKY, "sun moon fish very .")
    assert terms["words"] == 4 and terms["quality"] == pytest.approx((2 - 1) / 4)
    assert terms["reward"] == pytest.approx(0.25 + 0.04 * 4)
    assert world.hidden_reward("tell me about the sea ?", "fish wave") == pytest.approx(1.0 + 0.08)
    assert world.hidden_reward(SKY, "") == -1.0  # an empty answer is the worst quality
    assert SmallWorld(WorldConfig(length_weight=0.0)).hidden_reward(SKY, "sun sun sun sun") == pytest.approx(1.0)


def test_topic_of_and_bad_prompts():
    assert SmallWorld.topic_of("tell me about the forest ?") == "forest"
    assert SmallWorld.topic_of([{"role": "system", "content": "sea"}, {"role": "user", "content": "describe fruit"}]) == "fruit"
    with pytest.raises(ValueError, match="names no topic"):
        SmallWorld.topic_of("tell me a story")


def test_prompts_are_distinct_deterministic_and_cover_every_topic():
    world = SmallWorld()
    prompts = world.prompts(400, seed=3)
    texts = [p["prompt"][0]["content"] for p in prompts]
    assert len(set(texts)) == 400 and prompts == world.prompts(400, seed=3) and prompts != world.prompts(400, seed=4)
    assert {p["topic"] for p in prompts} == set(TOPICS)
    assert all(world.topic_of(p["prompt"]) == p["topic"] for p in prompts)
    with pytest.raises(ValueError, match="distinct prompts"):
        world.prompts(10**6, seed=0)


def test_base_distribution_matches_its_settings():
    world, rng = SmallWorld(WorldConfig(p_on_topic=0.4, p_off_topic=0.25)), random.Random(0)
    words = [w for _ in range(3000) for w in world.base_response(SKY, rng).split() if w != "."]
    on = sum(w in TOPICS["sky"] for w in words) / len(words)
    off = sum(w in {x for t, ws in TOPICS.items() if t != "sky" for x in ws} for w in words) / len(words)
    assert on == pytest.approx(0.4, abs=0.02) and off == pytest.approx(0.25, abs=0.02)


def _samples(world, n, rng):
    prompts = world.prompts(n, seed=1)
    return [{"prompt": p["prompt"], "completions": [world.base_response(p["prompt"], rng) for _ in range(4)]}
            for p in prompts]


def test_labels_without_noise_follow_the_reward_and_rw_rewards_are_aligned():
    world = SmallWorld()
    samples = _samples(world, 300, random.Random(1))
    rw, pref, stats = world.label(samples, noise=0.0, seed=0, bt_temperature=1e-6)
    for row in rw:
        assert row["rewards"] == [round(world.hidden_reward(row["prompt"], c), 6) for c in row["completions"]]
    # with a near-deterministic Bradley–Terry draw and no flips, chosen has the higher reward unless they tie
    assert all(world.hidden_reward(r["prompt"], r["chosen"]) >= world.hidden_reward(r["prompt"], r["rejected"])
               for r in pref)
    assert stats["flipped"] == 0 and stats["pairs"] == len(pref) > 250


def test_noise_flips_the_requested_fraction():
    world = SmallWorld()
    samples = _samples(world, 800, random.Random(2))
    _, pref, stats = world.label(samples, noise=0.3, seed=5)
    assert stats["flipped"] / stats["pairs"] == pytest.approx(0.3, abs=0.05)
    assert sum(r["flipped"] for r in pref) == stats["flipped"]
    _, _, clean = world.label(samples, noise=0.0, seed=5)
    assert clean["label_agrees_with_reward"] > stats["label_agrees_with_reward"] + 0.1
    with pytest.raises(ValueError, match="noise"):
        world.label(samples, noise=0.7, seed=0)


def test_empty_completions_never_reach_the_data():
    world = SmallWorld()
    samples = [{"prompt": SKY, "completions": ["sun moon .", "", "fish .", "sun ."]},
               {"prompt": SKY, "completions": ["", "sun .", "", ""]}]
    rw, pref, stats = world.label(samples, noise=0.0, seed=0)
    assert rw == []  # every rw row had an empty candidate
    assert all(r["chosen"].strip() and r["rejected"].strip() for r in pref) and len(pref) == 1
    assert stats["empty_completions"] == 4 and stats["skipped_identical"] == 1


def test_judge_verdicts_both_orders_and_position_bias():
    world = SmallWorld()
    judge = HiddenRewardJudge(world)
    good, bad = "sun moon star .", "fish fig ."
    assert judge.compare(SKY, good, bad) == "A" and judge.compare(SKY, bad, good) == "B"
    assert judge_both_orders(judge, SKY, good, bad) == ["win", "win"]
    assert judge_both_orders(judge, SKY, good, good) == ["tie", "tie"]
    # a judge that favours whatever it reads first: the two orders disagree and the pair nets a draw
    biased = HiddenRewardJudge(world, position_bias=10.0)
    outcomes = judge_both_orders(biased, SKY, bad, good)
    assert outcomes == ["win", "loss"] and win_rate([outcomes]).win_rate == 0.5


def test_win_rate_and_interval():
    outcomes = [["win", "win"]] * 6 + [["loss", "tie"]] * 2 + [["invalid", "loss"]] * 2
    result = win_rate(outcomes, bootstrap=2000, seed=1)
    assert result.win_rate == pytest.approx((12 + 0.5 * 2) / 20)
    assert result.official_win_rate == pytest.approx(12 / 20)  # ties and invalid verdicts count as losses
    assert (result.wins, result.ties, result.losses, result.invalid, result.n, result.pairs) == (12, 2, 4, 2, 20, 10)
    assert result.ci[0] < result.win_rate < result.ci[1]
    mean, (lo, hi) = mean_and_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and hi - mean == pytest.approx(1.96 * math.sqrt(5 / 3 / 4))
