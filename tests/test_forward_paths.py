"""The forward paths of prefopt.forward on tiny models built here (GPT-NeoX with an untied `lm_head`, Llama with tied
embeddings, Gemma-2 with final-logit soft-capping): log-probs from hidden states and padding-free packed rows give
the per-sequence log-probs of a plain float64 full-logits computation written here, and the same gradients as the
logits path."""

import logging

import pytest
import torch

from prefopt.data import PreferenceCollator
from prefopt.forward import ForwardPlan, plan_forward, summed_logps
from prefopt.packing import pack_rows, padding_fraction

VOCAB = 61


def _gpt_neox(attn):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                            tie_word_embeddings=False, attn_implementation=attn))


def _llama(attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                         tie_word_embeddings=True, attn_implementation=attn))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model


def _gemma2(attn):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(2)
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=1, head_dim=16, intermediate_size=64,
                                          max_position_embeddings=64, final_logit_softcapping=5.0,
                                          attn_implementation="eager"))


BUILDERS = {"gpt_neox": _gpt_neox, "llama": _llama, "gemma2": _gemma2}


def _batch(seed, records=3, k=2):
    """A collated micro-batch of random records (prompts and responses of varied lengths: padding happens)."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(low, high):
        n = int(torch.randint(low, high + 1, (1,), generator=generator))
        return torch.randint(3, VOCAB, (n,), generator=generator).tolist()

    features = [{"prompt_ids": tokens(1, 6), "completion_ids": [tokens(1, 9) for _ in range(k)],
                 "rewards": [1.0, 0.0][:k], "index": i} for i in range(records)]
    return PreferenceCollator(pad_token_id=0)(features)


def _float64_reference(model, batch, temperature):
    """Σ over completion tokens of log softmax(logits / T) at the next token, from the padded float64 forward."""
    model64 = type(model)(model.config).double().eval()
    model64.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = model64(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits / temperature, dim=-1)[:, :-1].gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (logp * batch["completion_mask"][:, 1:]).sum(-1)


def _plan(from_hidden, packed):
    return ForwardPlan(from_hidden=from_hidden, packed=packed, description="test")


@pytest.mark.parametrize("arch,attn", [("gpt_neox", "sdpa"), ("llama", "sdpa"), ("llama", "eager"),
                                       ("gemma2", "eager")])
def test_every_path_matches_the_float64_full_logits(arch, attn):
    model = BUILDERS[arch](attn).eval()
    batch = _batch(seed=len(arch) + len(attn))
    assert padding_fraction(batch["attention_mask"]) > 0  # the padded path really pads
    expected = _float64_reference(model, batch, temperature=0.8)
    counts = batch["completion_mask"][:, 1:].sum(-1).float()
    for from_hidden in (True, False):
        for packed in (False, True):
            with torch.no_grad():
                summed, count = summed_logps(model, batch, _plan(from_hidden, packed), temperature=0.8, chunk_size=2)
            torch.testing.assert_close(count, counts)
            torch.testing.assert_close(summed.double(), expected, rtol=1e-5, atol=1e-5,
                                       msg=f"{arch} {attn} from_hidden={from_hidden} packed={packed}")


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_hidden_and_packed_paths_give_the_gradients_of_the_logits_path(arch):
    batch = _batch(seed=7)
    weights = torch.linspace(-1.0, 1.5, batch["input_ids"].shape[0])
    grads = {}
    for from_hidden, packed in ((False, False), (True, False), (True, True)):
        model = BUILDERS[arch]("sdpa")
        summed, _ = summed_logps(model, batch, _plan(from_hidden, packed), temperature=0.8, chunk_size=3)
        (summed * weights).sum().backward()
        grads[from_hidden, packed] = {name: p.grad.clone() for name, p in model.named_parameters()}
    old = grads[False, False]
    assert all(g.abs().sum() > 0 for g in old.values())  # every parameter is used (DDP find_unused=False is safe)
    for key in ((True, False), (True, True)):
        for name, g in grads[key].items():
            # float32 sums in another order: agree to 1e-5 of the tensor's largest entry
            assert (g - old[name]).abs().max() <= 1e-5 * old[name].abs().max(), f"{key} {name}"


def test_pack_rows_positions_and_boundaries():
    batch = _batch(seed=3, records=2)
    packed = pack_rows(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    lengths = batch["attention_mask"].sum(1).tolist()
    assert packed["input_ids"].shape == (1, sum(lengths)) and packed["num_sequences"] == 4
    assert packed["position_ids"][0].tolist() == [t for n in lengths for t in range(n)]
    assert packed["sequence_ids"][0].tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert packed["input_ids"][0].tolist() == batch["input_ids"][batch["attention_mask"].bool()].tolist()
    with pytest.raises(ValueError, match="right-padded"):
        pack_rows(batch["input_ids"], batch["attention_mask"].flip(1), batch["completion_mask"])


def test_plan_logs_one_line_and_falls_back(caplog):
    model = _gpt_neox("sdpa")
    with caplog.at_level(logging.INFO, logger="prefopt.forward"):
        plan = plan_forward(model, padding_free="auto")
    assert plan.from_hidden and not plan.packed
    assert len(caplog.records) == 1 and "hidden states" in caplog.text and "padded rows" in caplog.text
    assert plan_forward(model, padding_free="true").packed
    assert not plan_forward(model, padding_free="false").packed
    zero3 = plan_forward(model, sharded="DeepSpeed ZeRO-3")
    assert not zero3.from_hidden and "ZeRO-3" in zero3.description
    assert not plan_forward(model, logps_from_hidden=False).from_hidden
    model.config._attn_implementation = "flash_attention_2"  # the plan only (no forward runs here)
    assert plan_forward(model).packed
    with pytest.raises(ValueError, match="padding_free"):
        plan_forward(model, padding_free="sometimes")


def test_unknown_architecture_falls_back_to_the_logits_path():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                                       bos_token_id=1, eos_token_id=2)).eval()
    plan = plan_forward(model)
    assert not plan.from_hidden and "'gpt2'" in plan.description
    batch = _batch(seed=9)
    with torch.no_grad():
        summed, _ = summed_logps(model, batch, plan)
    torch.testing.assert_close(summed.double(), _float64_reference(model, batch, 1.0), rtol=1e-5, atol=1e-5)
