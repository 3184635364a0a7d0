"""Per-layer pooled features against the models' own outputs, for every supported backbone."""

import pytest
import torch
import transformers as tf
from tiny_models import CLASSIFIERS, LAYERS, TINY_MODELS, build_tiny_model, tiny_pixels

from hf_nc.backbones import UnsupportedBackboneError, resolve_backbone
from hf_nc.features import FINAL, LayerFeatures, extract_features

# Independent expectations of the pooled features, written from each model's documented
# convention rather than from the backbone spec.
CLS_POOLED = {"vit", "vit_cls", "deit_cls", "dinov2", "dinov2_cls", "clip_vision", "clip_vision_proj", "clip_cls"}


def reference_pool(name, hidden):
    if name in CLS_POOLED:
        return hidden[:, 0]
    return hidden.mean(dim=1)  # SigLIP: no CLS token


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_block_features_match_output_hidden_states(name):
    model, x = build_tiny_model(name), tiny_pixels()
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    feats = extract_features(model, x)
    hidden_states = out.hidden_states if out.hidden_states is not None else out.vision_model_output.hidden_states
    assert len(hidden_states) == LAYERS + 1  # embeddings + one per block
    for i in range(LAYERS):
        torch.testing.assert_close(feats[i], reference_pool(name, hidden_states[i + 1]), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_inputs_of_another_size_interpolate_positions(name):
    # extract_features called the model bare: 24 px inputs on a 16 px ViT/CLIP/SigLIP failed with
    # "Input image size (24*24) doesn't match model (16*16)" (DINOv2 always interpolates)
    model, x = build_tiny_model(name), torch.nn.functional.interpolate(tiny_pixels(), size=(24, 24))
    kwargs = {"interpolate_pos_encoding": True} if "dinov2" not in name else {}
    tower = model.vision_model if name == "clip_cls" else model  # (its forward has no such flag: ask its tower)
    with torch.no_grad():
        out = tower(pixel_values=x, output_hidden_states=True, **kwargs)
    hidden_states = out.hidden_states if out.hidden_states is not None else out.vision_model_output.hidden_states
    feats = extract_features(model, x)
    for i in range(LAYERS):
        torch.testing.assert_close(feats[i], reference_pool(name, hidden_states[i + 1]), rtol=0, atol=0)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_final_features_are_the_classifier_input(name):
    model, x = build_tiny_model(name), tiny_pixels()
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        feats = extract_features(model, x, layers=[])
        torch.testing.assert_close(model.classifier(feats[FINAL]), logits)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("vit", lambda m, o: o.last_hidden_state[:, 0]),
        ("dinov2", lambda m, o: o.last_hidden_state[:, 0]),
        ("clip_vision", lambda m, o: o.pooler_output),
        ("clip_vision_proj", lambda m, o: None),
        ("siglip_vision", lambda m, o: o.last_hidden_state.mean(dim=1)),
    ],
)
def test_final_features_of_bare_backbones(name, expected):
    model, x = build_tiny_model(name), tiny_pixels()
    with torch.no_grad():
        out = model(pixel_values=x)
        final = extract_features(model, x, layers=[])[FINAL]
        want = expected(model, out)
        if want is None:  # with projection: the projected pooled CLS is the image embedding
            torch.testing.assert_close(model.visual_projection(final), out.image_embeds)
        else:
            torch.testing.assert_close(final, want)


def test_pooling_override_and_negative_layers():
    model, x = build_tiny_model("vit_cls"), tiny_pixels()
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
        mean = extract_features(model, x, layers=[-1], pooling="mean")
        custom = extract_features(model, x, layers=[0], pooling=lambda h: h.amax(dim=1))
    assert set(mean) == {LAYERS - 1, FINAL}
    torch.testing.assert_close(mean[LAYERS - 1], hidden[LAYERS][:, 1:].mean(dim=1))
    torch.testing.assert_close(custom[0], hidden[1].amax(dim=1))


def test_hooks_are_removed_and_record_every_forward():
    model, x = build_tiny_model("vit_cls"), tiny_pixels()
    with LayerFeatures(model, layers=[1]) as recorder, torch.no_grad():
        model(pixel_values=x)
        first = recorder.pop()
        model(pixel_values=x[:1])
        assert recorder.pop()[1].shape == (1, first[1].shape[1])
        with pytest.raises(RuntimeError, match="no features were recorded"):
            recorder.pop()
    assert not any(b._forward_hooks for b in resolve_backbone(model).blocks)
    assert not model.classifier._forward_pre_hooks


def test_out_of_range_layer_names_the_real_range():
    model = build_tiny_model("vit")
    with pytest.raises(ValueError, match=r"0\.\.3"):
        LayerFeatures(model, layers=[4])


def test_unsupported_architecture_names_supported_ones():
    config = tf.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=32)
    with pytest.raises(UnsupportedBackboneError, match=r"model_type='bert'.*vit.*register_backbone"):
        LayerFeatures(tf.BertModel(config))


def test_layers_set_after_construction_are_checked_and_normalised():
    # recorder.layers = [-1] used to record under the key -1 (not the block index every reader expects) and
    # a bad index to fail at __enter__ with an IndexError; changing it while recording changed no hook
    model, x = build_tiny_model("vit_cls"), tiny_pixels()
    recorder = LayerFeatures(model, layers=[0])
    recorder.layers = [-1]
    assert recorder.layers == [LAYERS - 1] and recorder.keys == [LAYERS - 1, FINAL]
    with recorder, torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
        got = recorder.pop()
        with pytest.raises(RuntimeError, match="cannot change while recording"):
            recorder.layers = [0]
    torch.testing.assert_close(got[LAYERS - 1], hidden[LAYERS][:, 0])
    with pytest.raises(ValueError, match=r"0\.\.3"):
        recorder.layers = [LAYERS]
