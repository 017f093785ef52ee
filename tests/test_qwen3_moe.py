"""shared.qwen3_moe against transformers' Qwen3MoeForCausalLM.

Small random reference models (every layer a mixture of experts; top-k weights renormalised or
not; head tied or not) are saved with save_pretrained, read back with qwen3_moe_config_from_hf
and load_hf_weights, and must give the same logits, greedy tokens (with and without the KV
cache), router logits and load-balancing loss. Bad input gets errors that name the value.
"""

import pytest
import torch
import torch.nn.functional as F

from shared.open_models import (
    SwiGLUFeedForward,
    count_parameters,
    hf_key_mapping,
    load_hf_weights,
)
from shared.pretraining import generate
from shared.qwen3_moe import (
    QWEN3_MOE_CONFIG_30B_A3B,
    Qwen3MoeBlock,
    Qwen3MoeModel,
    SparseMoEFeedForward,
    load_balancing_loss,
    load_pretrained_qwen3_moe,
    moe_parameter_counts,
    qwen3_moe_config_from_hf,
    record_router_logits,
    split_fused_experts,
)
from shared.weight_loading import ShardedSafetensors, load_into_empty, shard_names
from tests.hf_parity import (
    assert_cached_logits_match,
    assert_greedy_tokens_match,
    assert_logits_match,
    random_ids,
    save_and_load,
    saved_config,
    saved_weights,
)

transformers = pytest.importorskip("transformers")

COMMON = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 96,  # a dense layer's width: unused, every layer is sparse
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 48,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "initializer_range": 0.1,  # larger than the default, so logits and routes differ clearly
}
VARIANTS = {
    # As Qwen3-30B-A3B: top-k weights renormalised, separate head.
    "published": {
        **COMMON,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
        "tie_word_embeddings": False,
    },
    # transformers' defaults for the other two settings: raw probabilities, tied head.
    "unnormalised_tied": {
        **COMMON,
        "num_experts": 6,
        "num_experts_per_tok": 3,
        "norm_topk_prob": False,
        "tie_word_embeddings": True,
    },
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    """(reference model, course model loaded from the reference's saved files, saved folder)."""
    torch.manual_seed(0)
    config = transformers.Qwen3MoeConfig(**VARIANTS[request.param])
    reference = transformers.Qwen3MoeForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp(request.param)
    course = save_and_load(reference, folder, qwen3_moe_config_from_hf, Qwen3MoeModel)
    return reference, course, folder


def read_config(folder) -> dict:
    return qwen3_moe_config_from_hf(saved_config(folder))


def read_config_of(reference) -> dict:
    return qwen3_moe_config_from_hf(reference.config.to_dict())


def test_config_is_read_from_the_saved_config_json(pair):
    reference, course, folder = pair
    assert "num_local_experts" in saved_config(
        folder
    )  # transformers 5 writes num_experts under this name
    cfg = read_config(folder)
    assert cfg["num_experts"] == reference.config.num_experts
    assert cfg["num_experts_per_token"] == reference.config.num_experts_per_tok
    assert cfg["moe_hidden_dim"] == 32 and cfg["qk_norm"]
    assert cfg["norm_topk_prob"] == reference.config.norm_topk_prob
    assert (course.out_head.weight is course.tok_emb.weight) == cfg["tie_embeddings"]
    assert count_parameters(course) == sum(p.numel() for p in reference.parameters())


def test_the_checkpoint_holds_one_tensor_per_expert_and_the_mapping_names_them_all(pair):
    _, course, folder = pair
    stored = set(saved_weights(folder))
    mapping = hf_key_mapping(course)
    assert set(mapping.values()) == stored
    assert mapping["trf_blocks.1.ff.router.weight"] == "model.layers.1.mlp.gate.weight"
    assert (
        mapping["trf_blocks.0.ff.experts.5.fc_gate.weight"]
        == "model.layers.0.mlp.experts.5.gate_proj.weight"
    )


def test_logits_match_the_reference(pair):
    reference, course, _ = pair
    # float32, the same operations in the same order but for the experts' gate and up
    # projections (one fused matrix product there, two here): rounding differences of ~1e-6,
    # far below the size of a logit. A token routed to another expert would differ by ~0.1.
    assert_logits_match(reference, course, random_ids(40, seed=1, batch=2), atol=1e-5)


def test_greedy_tokens_match_with_and_without_the_kv_cache(pair):
    reference, course, _ = pair
    assert_greedy_tokens_match(reference, course, random_ids(6, seed=2), 30, context_size=48)


def test_cached_logits_equal_the_full_forward_pass(pair):
    _, course, _ = pair
    assert_cached_logits_match(course, random_ids(20, seed=3), prompt_length=12, atol=1e-5)


def test_router_logits_and_the_load_balancing_loss_match_the_reference(pair):
    reference, course, _ = pair
    ids = random_ids(24, seed=4, batch=2)
    with torch.no_grad():
        out = reference(ids, labels=ids, output_router_logits=True)
        with record_router_logits(course) as router_logits:
            logits = course(ids)
    num_experts = reference.config.num_experts
    assert [r.shape for r in router_logits] == [(48, num_experts)] * 2  # b * n tokens per layer
    for ours, theirs in zip(router_logits, out.router_logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    top_k = reference.config.num_experts_per_tok
    # On the same logits the two computations agree to float32 rounding.
    torch.testing.assert_close(load_balancing_loss(out.router_logits, top_k), out.aux_loss)
    aux = load_balancing_loss(router_logits, top_k)
    torch.testing.assert_close(aux, out.aux_loss, atol=1e-5, rtol=0)
    # The training loss: next-token cross-entropy plus router_aux_loss_coef times the aux loss.
    cross_entropy = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    coef = QWEN3_MOE_CONFIG_30B_A3B["router_aux_loss_coef"]
    assert coef == reference.config.router_aux_loss_coef
    torch.testing.assert_close(cross_entropy + coef * aux, out.loss, atol=1e-5, rtol=0)


def test_the_load_balancing_loss_leaves_padding_out_as_transformers_does():
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    generator = torch.Generator().manual_seed(5)
    layers = tuple(torch.randn(2 * 7, 8, generator=generator) for _ in range(3))
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0  # the second text is 3 tokens shorter
    expected = load_balancing_loss_func(layers, 8, top_k=2, attention_mask=mask)
    torch.testing.assert_close(load_balancing_loss(layers, 2, token_mask=mask), expected)
    # Leaving the padding out is not the same as counting it.
    assert not torch.allclose(load_balancing_loss(layers, 2), expected)


def test_the_load_balancing_loss_is_top_k_when_balanced_and_num_experts_when_collapsed():
    num_experts, top_k, tokens = 8, 2, 64
    # Balanced: token t prefers experts t and t + 1 (mod 8), by a small margin.
    preferred = torch.arange(tokens)[:, None] + torch.arange(top_k)
    balanced = torch.zeros(tokens, num_experts).scatter_(1, preferred % num_experts, 0.01)
    collapsed = torch.zeros(tokens, num_experts)
    collapsed[:, :top_k] = 30.0  # every token sends all its probability to experts 0 and 1
    assert load_balancing_loss([balanced], top_k).item() == pytest.approx(top_k, rel=1e-3)
    assert load_balancing_loss([collapsed], top_k).item() == pytest.approx(num_experts, rel=1e-3)


def test_each_expert_runs_once_on_exactly_the_tokens_that_chose_it():
    torch.manual_seed(6)
    moe = SparseMoEFeedForward(16, 8, num_experts=6, top_k=2).eval()
    tokens = torch.randn(15, 16)
    seen = {}  # expert index -> the rows it ran on

    def record(index: int):
        def hook(module, args, out):
            assert index not in seen, f"expert {index} ran twice"
            seen[index] = args[0]

        return hook

    hooks = [expert.register_forward_hook(record(i)) for i, expert in enumerate(moe.experts)]
    with torch.no_grad():
        out = moe(tokens.view(3, 5, 16))
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        weights, experts = moe.route(tokens)
        # The same mixture computed densely: every expert on every token, weighted by 0 where
        # the token did not choose it.
        dense = torch.zeros(15, 6).scatter_(1, experts, weights)
        expected = sum(dense[:, [e]] * expert(tokens) for e, expert in enumerate(moe.experts))
    torch.testing.assert_close(out.view(15, 16), expected, atol=1e-6, rtol=0)
    for index in range(6):
        chose = (experts == index).any(dim=1)
        if chose.any():
            torch.testing.assert_close(seen[index], tokens[chose])
        else:
            assert index not in seen
    assert sum(rows.shape[0] for rows in seen.values()) == 15 * 2  # k expert passes per token


def test_active_parameters_leave_out_the_experts_a_token_does_not_use(pair):
    reference, course, _ = pair
    total, active = moe_parameter_counts(course)
    config = reference.config
    per_expert = 3 * config.hidden_size * config.moe_intermediate_size
    idle = config.num_hidden_layers * (config.num_experts - config.num_experts_per_tok) * per_expert
    assert total == count_parameters(course) and active == total - idle


def test_the_published_30b_a3b_config_has_the_published_parameter_counts():
    cfg = QWEN3_MOE_CONFIG_30B_A3B
    with torch.device("meta"):
        course = Qwen3MoeModel(cfg)
        reference = transformers.Qwen3MoeForCausalLM(
            transformers.Qwen3MoeConfig(
                vocab_size=cfg["vocab_size"],
                hidden_size=cfg["emb_dim"],
                intermediate_size=cfg["hidden_dim"],
                moe_intermediate_size=cfg["moe_hidden_dim"],
                num_hidden_layers=cfg["n_layers"],
                num_attention_heads=cfg["n_heads"],
                num_key_value_heads=cfg["n_kv_groups"],
                head_dim=cfg["head_dim"],
                num_experts=cfg["num_experts"],
                num_experts_per_tok=cfg["num_experts_per_token"],
                max_position_embeddings=cfg["context_length"],
            )
        )
    total, active = moe_parameter_counts(course)
    assert total == sum(p.numel() for p in reference.parameters()) == 30_532_122_624
    # Qwen's model card: "30.5B in total and 3.3B activated".
    assert round(total / 1e9, 1) == 30.5 and 3.3e9 <= active == 3_353_032_704 < 3.4e9


def test_a_transformers_state_dict_with_fused_experts_loads_after_splitting(pair):
    reference, course, _ = pair
    fused = reference.state_dict()
    assert fused["model.layers.0.mlp.experts.gate_up_proj"].dim() == 3  # (E, 2 * hidden, d)
    model = Qwen3MoeModel(read_config_of(reference)).eval()
    load_hf_weights(model, split_fused_experts(fused))
    for name, tensor in course.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_a_sharded_checkpoint_loads_through_its_index(pair, tmp_path):
    # As load_pretrained_qwen3_moe loads the published shards (shared.weight_loading tests the
    # sharded reading itself, and a name in two shards refused).
    reference, course, _ = pair
    reference.save_pretrained(tmp_path, max_shard_size="200KB")
    shards = shard_names(tmp_path / "model.safetensors.index.json")
    assert len(shards) > 1 and set(shards) == {p.name for p in tmp_path.glob("model-*.safetensors")}
    params = ShardedSafetensors(tmp_path / name for name in shards)
    model = load_into_empty(Qwen3MoeModel, read_config(tmp_path), params)
    assert isinstance(model, Qwen3MoeModel) and not model.training
    assert model.cos_full_attention.device.type == "cpu"
    ids = random_ids(10, seed=7)
    with torch.no_grad():
        assert torch.equal(model(ids), course(ids))


def test_a_moe_block_builds_its_experts_and_no_dense_feed_forward(monkeypatch):
    built = []
    build = SwiGLUFeedForward.__init__

    def counted(self, emb_dim, hidden_dim, *args, **kwargs):
        built.append(hidden_dim)
        build(self, emb_dim, hidden_dim, *args, **kwargs)

    monkeypatch.setattr(SwiGLUFeedForward, "__init__", counted)
    cfg = qwen3_moe_config_from_hf(transformers.Qwen3MoeConfig(**VARIANTS["published"]).to_dict())
    block = Qwen3MoeBlock(cfg)
    assert isinstance(block.ff, SparseMoEFeedForward)
    assert built == [cfg["moe_hidden_dim"]] * cfg["num_experts"]  # the experts, nothing else
    assert "ff.router.weight" in block.state_dict()


def test_a_missing_expert_is_listed(pair):
    _, course, folder = pair
    params = saved_weights(folder)
    params.pop("model.layers.1.mlp.experts.2.up_proj.weight")
    with pytest.raises(ValueError, match=r"1 missing \(model\.layers\.1\.mlp\.experts\.2\.up_proj"):
        load_hf_weights(course, params)


HF_30B = {
    "model_type": "qwen3_moe",
    **VARIANTS["published"],
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mlp_only_layers": [1]}, r"mlp_only_layers=\[1\].*every layer must be"),
        ({"decoder_sparse_step": 2}, "decoder_sparse_step=2"),
        ({"model_type": "qwen3"}, "'qwen3' is not supported"),
        ({"use_sliding_window": True}, "use_sliding_window=True"),
        ({"hidden_act": "gelu"}, "'gelu'"),
    ],
)
def test_unsupported_configs_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        qwen3_moe_config_from_hf({**HF_30B, **change})


def test_bad_routing_settings_are_named():
    with pytest.raises(ValueError, match=r"top_k \(9\) must be between 1 and num_experts \(8\)"):
        SparseMoEFeedForward(16, 8, num_experts=8, top_k=9)
    with pytest.raises(ValueError, match=r"num_experts \(0\)"):
        SparseMoEFeedForward(16, 8, num_experts=0, top_k=1)
    logits = [torch.zeros(6, 4)]
    with pytest.raises(ValueError, match="token_mask has 5 entries but .* 6 tokens"):
        load_balancing_loss(logits, 2, token_mask=torch.ones(5))
    with pytest.raises(ValueError, match=r"top_k \(5\) must be between 1 and the 4 experts"):
        load_balancing_loss(logits, 5)


def test_a_dense_qwen3_config_is_refused_naming_what_it_lacks():
    from shared.qwen3 import QWEN3_CONFIG_0_6B

    with pytest.raises(ValueError, match="needs num_experts, num_experts_per_token, moe_hidden"):
        Qwen3MoeModel(QWEN3_CONFIG_0_6B)


def test_under_the_test_switch_the_standin_runs_with_the_cache(capsys):
    loaded = load_pretrained_qwen3_moe()
    assert loaded.is_standin
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "LLM_COURSE_STANDIN=1" in out and "Qwen3-MoE" in out
    ids = torch.tensor([loaded.tokenizer.encode("Every effort moves you")])
    plain = generate(loaded.model, ids, 8, loaded.model.context_length)
    cached = generate(loaded.model, ids, 8, loaded.model.context_length, use_cache=True)
    assert torch.equal(plain, cached) and plain.shape == (1, ids.shape[1] + 8)
