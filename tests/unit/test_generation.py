"""The sampling loop on real tiny transformers models."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.generation import Sampling, filter_logits, response_mask_after_eos, sample_responses


def test_filter_logits_top_k_and_top_p_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # the top two tokens reach 0.8 >= 0.7: the rest are dropped
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_logits(logits)).any()


def test_response_mask_keeps_the_first_eos_and_drops_what_follows():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    assert response_mask_after_eos(ids, eos_token_id=2).tolist() == [
        [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_and_tokenizer(request, tiny_gpt2_dir, tiny_llama_dir):
    folder = tiny_gpt2_dir if request.param == "gpt2" else tiny_llama_dir
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def encode(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def test_greedy_sampling_matches_transformers_generate(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids, mask = encode(tok, ["the cat likes", "a dog", "What is 3 + 4?"])
    ours, _, _ = sample_responses(model, ids, mask, Sampling(max_new_tokens=8, temperature=0),
                                  eos_token_id=-1, pad_token_id=tok.pad_token_id)
    theirs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                            pad_token_id=tok.pad_token_id, eos_token_id=None)
    assert torch.equal(ours, theirs[:, ids.shape[1]:])


def test_left_padding_and_batch_neighbours_never_change_the_response(model_and_tokenizer):
    model, tok = model_and_tokenizer
    greedy = Sampling(max_new_tokens=6, temperature=0)
    alone, _, _ = sample_responses(model, *encode(tok, ["a dog"]), greedy, -1, tok.pad_token_id)
    batched, _, _ = sample_responses(model, *encode(tok, ["What is 12 + 30? The answer", "a dog"]),
                                     greedy, -1, tok.pad_token_id)
    assert torch.equal(batched[1], alone[0])


def test_stops_at_eos_pads_after_it_and_ends_when_all_rows_are_done(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids, mask = encode(tok, ["the cat likes"] * 3)
    greedy = Sampling(max_new_tokens=10, temperature=0)
    free, _, _ = sample_responses(model, ids, mask, greedy, -1, tok.pad_token_id)
    stop = int(free[0, 2])  # declare the third greedy token to be the EOS
    first = int((free[0] == stop).nonzero()[0])
    resp, resp_mask, has_eos = sample_responses(model, ids, mask, greedy, stop, tok.pad_token_id)
    assert resp.shape[1] == first + 1  # the loop ended as soon as every row stopped
    assert has_eos.all() and resp_mask.sum(-1).tolist() == [first + 1] * 3


def test_sampling_is_reproducible_with_a_generator(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids, mask = encode(tok, ["the cat likes", "a dog"])
    draw = lambda seed: sample_responses(model, ids, mask, Sampling(max_new_tokens=8, temperature=1.0),
                                         tok.eos_token_id, tok.pad_token_id,
                                         torch.Generator().manual_seed(seed))[0]
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_a_model_in_training_mode_is_refused(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).train()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    with pytest.raises(RuntimeError, match="dropout on"):
        sample_responses(model, *encode(tok, ["a dog"]), Sampling(), tok.eos_token_id, tok.pad_token_id)


def test_inverse_cdf_sampling_draws_from_the_softmax():
    from rlhfkit.generation import sample_tokens
    inf = float("-inf")
    logits = torch.tensor([[inf, 0.0, 1.0, inf, 2.0, inf]]).expand(200_000, 6)
    tokens = sample_tokens(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=6).double() / len(tokens)
    expected = torch.softmax(logits[0].double(), -1)
    assert freq[0] == freq[3] == freq[5] == 0  # a filtered token is never drawn, first or last
    assert torch.allclose(freq, expected, atol=4e-3)
    # one token left: drawn every time, whatever u is
    only = torch.full((1000, 6), inf).index_fill_(1, torch.tensor([2]), 0.0)
    assert (sample_tokens(only, torch.Generator().manual_seed(1)) == 2).all()


def test_a_shard_of_rows_samples_what_the_whole_batch_samples(model_and_tokenizer):
    """Rank r of a data-parallel run samples its rows exactly as one process would."""
    model, tok = model_and_tokenizer
    prompts = ["the cat likes", "a dog", "What is 12 + 30? The answer", "a cat"]
    sampling = Sampling(max_new_tokens=6, temperature=1.0)
    run = lambda texts, **kw: sample_responses(model, *encode(tok, texts), sampling, -1,
                                               tok.pad_token_id,
                                               torch.Generator().manual_seed(5), **kw)[0]
    whole = run(prompts)
    first = run(prompts[:2], row_offset=0, total_rows=4)
    second = run(prompts[2:], row_offset=2, total_rows=4)
    assert torch.equal(torch.cat([first, second]), whole)


def test_rows_that_stopped_leave_the_batch_and_every_row_keeps_its_own_tokens(
        model_and_tokenizer):
    """Sampling with a stop token: rows that emitted it are dropped from the forward passes
    (the batch shrinks), yet each row's tokens are those it gets when sampled alone."""
    model, tok = model_and_tokenizer
    prompts = ["the cat likes", "a dog", "What is 12 + 30? The answer", "a cat", "the dog",
               "my friend", "an old song", "the sea"]
    sampling = Sampling(max_new_tokens=12, temperature=1.0)
    free = sample_responses(model, *encode(tok, prompts), sampling, -1, tok.pad_token_id,
                            torch.Generator().manual_seed(1))[0]
    # the stop token: the one most rows draw within 6 steps, so rows stop at different times
    stop = max(set(free[:, :6].flatten().tolist()),
               key=lambda v: int((free[:, :6] == v).any(-1).sum()))
    sizes = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        whole, whole_mask, whole_eos = sample_responses(
            model, *encode(tok, prompts), sampling, stop, tok.pad_token_id,
            torch.Generator().manual_seed(1))
    finally:
        hook.remove()
    assert sizes[0] == 8 and min(sizes) < 8 and sizes == sorted(sizes, reverse=True)
    for i, prompt in enumerate(prompts):
        alone, alone_mask, alone_eos = sample_responses(
            model, *encode(tok, [prompt]), sampling, stop, tok.pad_token_id,
            torch.Generator().manual_seed(1), row_offset=i, total_rows=8)
        n = int(alone_mask.sum())
        assert int(whole_mask[i].sum()) == n and bool(whole_eos[i]) == bool(alone_eos[0])
        assert torch.equal(whole[i, :n], alone[0, :n]), prompt
