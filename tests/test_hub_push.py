"""Push hf-nc adapters with their cards to a local stand-in for the Hub, and load them in a fresh process.

Nothing of ours is mocked: the real ``huggingface_hub`` / ``transformers`` / ``peft`` clients talk HTTP to
``tests/hub_server.py``. ``huggingface_hub`` reads ``HF_ENDPOINT`` etc. at import time (and this test
process is offline, see conftest.py), so pushing and loading each run in a fresh subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hub_server import FakeHub, SilentServer

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
METRICS = {"eval_accuracy": 0.8125, "train_nc1": 0.0421, "eval_nc1": 0.6180, "eval_nc2_etf": 0.25,
           "eval_runtime": 1.5}
# per split, as a recipe reports them: selection on validation, test once at the end
METRICS_SPLIT = {"validation": {"eval_accuracy": 0.75, "eval_nc1": 0.5, "eval_train_subset_nc1": 0.0421},
                 "test": {"test_accuracy": 0.8125, "test_nc1": 0.6180, "test_nc2_etf": 0.25}}

# Side 1: build a seeded tiny ViT, save it locally and push it as "user/tiny-vit" (so the card's own loading
# snippet can run against the fake Hub); adapt it with SCL FT and head FT, move the trainable weights, push
#   - SCL:  peft's model.push_to_hub + card.push_to_hub (two commits, what a user may do by hand)
#   - head: hf_nc.cards.push_adapter (adapter + card in one commit, card's repo-id placeholder filled in),
#           metrics per split (validation and test in the model-index)
PUSH = r"""
import json, sys, torch, transformers as tf
import hf_nc
from hf_nc.cards import adapter_card_from_model, push_adapter
from peft import get_peft_model

out, metrics, metrics_split = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
torch.manual_seed(0)
config = tf.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                      image_size=16, patch_size=8, num_labels=3)
tf.ViTForImageClassification(config).eval().save_pretrained(f"{out}/base")
base = lambda: tf.ViTForImageClassification.from_pretrained(f"{out}/base").eval()
base().push_to_hub("user/tiny-vit")

pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
result = {"pixels": pixels}
for repo, config in [("user/tiny-scl", hf_nc.SCLConfig(layer=1)),
                     ("user/tiny-head", hf_nc.HeadFTConfig(heads={-1: "all", 1: [0, 2]}))]:
    model = get_peft_model(base(), config)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        result[repo] = model(pixel_values=pixels).logits
        with model.disable_adapter():
            result[repo + ":base"] = model(pixel_values=pixels).logits
    if repo == "user/tiny-scl":
        card = adapter_card_from_model(model, "user/tiny-vit", metrics, "user/tiny-data", repo_id=repo)
        result["urls"] = [str(model.push_to_hub(repo)), str(card.push_to_hub(repo))]
    else:
        card = adapter_card_from_model(model, "user/tiny-vit", metrics_split, "user/tiny-data")
        result["urls"].append(str(push_adapter(model, repo, card)))
    # trainable parameters, and the base model's own count (the trainable share's denominator)
    result[repo + ":counts"] = [sum(p.numel() for p in model.parameters() if p.requires_grad),
                                sum(p.numel() for p in base().parameters())]
torch.save(result, f"{out}/expected.pt")
print(json.dumps({"urls": [str(u) for u in result["urls"]]}))
"""

# Side 2, a fresh process with an empty cache: without `import hf_nc` PEFT cannot load the adapter; with it,
# the adapter on the (local) base reproduces the pushing side's logits; hf_nc.AutoPeftModelForImageClassification
# loads base and adapter from the repo id alone; the card's own snippets (hf-nc's loader and plain PEFT), run
# verbatim, load base and adapter from the Hub and give the same logits.
LOAD = r"""
import json, sys, torch
from peft import PeftModel
from transformers import ViTForImageClassification
from huggingface_hub import ModelCard

out = sys.argv[1]
expected = torch.load(f"{out}/expected.pt")
report = {}
for repo in ["user/tiny-scl", "user/tiny-head"]:
    r = report[repo] = {}
    if "hf_nc" not in sys.modules:
        try:
            PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(f"{out}/base"), repo)
            r["without_import"] = "loaded"
        except KeyError as err:
            r["without_import"] = f"KeyError: {err}"
    import hf_nc
    from hf_nc.cards import loading_snippet
    model = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(f"{out}/base").eval(), repo).eval()
    with torch.no_grad():
        logits = model(pixel_values=expected["pixels"]).logits
    r["diff"] = (logits - expected[repo]).abs().max().item()
    if hasattr(hf_nc, "AutoPeftModelForImageClassification"):
        auto = hf_nc.AutoPeftModelForImageClassification.from_pretrained(repo).eval()
        with torch.no_grad():
            r["auto_diff"] = (auto(pixel_values=expected["pixels"]).logits - expected[repo]).abs().max().item()
    r["moved"] = (expected[repo] - expected[repo + ":base"]).abs().max().item()
    card = ModelCard.load(repo)
    d = card.data
    r["card"] = {"base_model": d.base_model, "library_name": d.library_name, "tags": d.tags,
                 "datasets": d.datasets, "hf_nc": d.get("hf_nc"),
                 "eval": [[e.dataset_split, e.metric_type, e.metric_value] for e in d.eval_results or []]}
    r["counts"] = expected[repo + ":counts"]
    r["snippet"] = {}
    for which in (["auto", "peft"] if hasattr(hf_nc, "AutoPeftModelForImageClassification") else ["peft"]):
        snippet = r["snippet"][which] = loading_snippet(card, which)
        scope = {}
        exec(snippet, scope)
        with torch.no_grad():
            logits = scope["model"](pixel_values=expected["pixels"]).logits
        r[which + "_snippet_diff"] = (logits - expected[repo]).abs().max().item()
print(json.dumps(report))
"""


def _run(script: str, args: list[str], env: dict, tmp_path: Path, name: str, timeout: float = 120) -> dict:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, env=env,
                          cwd=str(REPO_ROOT), timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_push_adapters_and_cards_then_load_in_fresh_process(tmp_path):
    t0 = time.time()
    with FakeHub() as hub:
        pushed = _run(PUSH, [str(tmp_path), json.dumps(METRICS), json.dumps(METRICS_SPLIT)],
                      hub.client_env(tmp_path / "hf_home_push"),
                      tmp_path, "push")
        n_push_requests = len(hub.requests)
        loaded = _run(LOAD, [str(tmp_path)], hub.client_env(tmp_path / "hf_home_load"), tmp_path, "load")
        load_requests = hub.requests[n_push_requests:]

        # the server received exactly the adapter files for the adapter repos, never base weights
        for repo in ["user/tiny-scl", "user/tiny-head"]:
            assert hub.uploaded_paths(repo) == ADAPTER_FILES, hub.uploaded_paths(repo)
            assert set(hub.files(repo)) == ADAPTER_FILES | {".gitattributes"}
            assert len(hub.files(repo)["adapter_model.safetensors"]) < 100_000
        assert "model.safetensors" in hub.files("user/tiny-vit")  # the base went to its own repo only
        # push_adapter: adapter + card in one commit after the repo's initial one
        assert len(hub.repos[("model", "user/tiny-head")].commits) == 2
        head_card = hub.files("user/tiny-head")["README.md"].decode()
        assert 'PeftModel.from_pretrained(base, "user/tiny-head")' in head_card  # placeholder filled in
        assert 'AutoPeftModelForImageClassification.from_pretrained("user/tiny-head")' in head_card
        head_config = json.loads(hub.files("user/tiny-head")["adapter_config.json"])
        assert head_config["base_model_name_or_path"] == "user/tiny-vit"  # not the local dir it was loaded from
        scl_card = hub.files("user/tiny-scl")["README.md"].decode()
        assert "# tiny-scl" in scl_card and "hf-nc" in scl_card  # our card replaced transformers' default one
        # loading only reads
        assert load_requests and all(method in ("GET", "HEAD") for method, _, _ in load_requests), load_requests

    assert len(pushed["urls"]) == 3
    assert all(u.startswith(hub.url + "/user/tiny-") and "/commit/" in u for u in pushed["urls"]), pushed

    cases = [("user/tiny-scl", "scl-ft", "HFNC_SCL"), ("user/tiny-head", "head-ft", "HFNC_HEAD_FT")]
    for repo, method, peft_type in cases:
        r = loaded[repo]
        assert r["moved"] > 1e-3, "the pushed adapter must differ from the base"
        assert r["diff"] < 1e-6, r["diff"]
        assert r["peft_snippet_diff"] < 1e-6, r["peft_snippet_diff"]
        assert 'PeftModel.from_pretrained(base, "%s")' % repo in r["snippet"]["peft"]
        if "auto" in r["snippet"]:  # hf_nc.AutoPeftModelForImageClassification (hf_nc/auto.py)
            assert r["auto_diff"] < 1e-6 and r["auto_snippet_diff"] < 1e-6, r
            assert 'AutoPeftModelForImageClassification.from_pretrained("%s")' % repo in r["snippet"]["auto"]
        card = r["card"]
        assert card["base_model"] == "user/tiny-vit"
        assert card["library_name"] == "peft"
        assert {"hf-nc", "neural-collapse", method, "peft"} <= set(card["tags"])
        assert card["datasets"] == ["user/tiny-data"]
        assert ["test", "accuracy", METRICS["eval_accuracy"]] in card["eval"]
        assert ["train", "nc1", METRICS["train_nc1"]] in card["eval"]
        assert ["test", "nc1", METRICS["eval_nc1"]] in card["eval"]
        if repo == "user/tiny-head":  # per split: validation and test results in the model-index
            assert ["validation", "accuracy", 0.75] in card["eval"] and ["validation", "nc1", 0.5] in card["eval"]
        assert not any(m == "runtime" for _, m, _ in card["eval"])
        assert card["hf_nc"]["peft_type"] == peft_type
        assert [card["hf_nc"]["trainable_params"], card["hf_nc"]["base_params"]] == r["counts"]
    assert loaded["user/tiny-scl"]["without_import"] == "KeyError: 'HFNC_SCL'"
    assert time.time() - t0 < 180  # two fresh processes; generous: the CPUs are shared


# A Hub endpoint that accepts the connection and never answers: push_adapter must give up within its timeout
# (from the argument or HF_NC_HUB_TIMEOUT) with an error naming the endpoint and the timeout, not hang.
HUNG = r"""
import json, os, sys, time, torch, transformers as tf
import hf_nc
from hf_nc.cards import adapter_card_from_model, push_adapter
from peft import get_peft_model

kwargs = json.loads(sys.argv[1])
config = tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      image_size=16, patch_size=8, num_labels=3)
model = get_peft_model(tf.ViTForImageClassification(config), hf_nc.SCLConfig(layer=0))
t0 = time.monotonic()
try:
    push_adapter(model, "user/hung", adapter_card_from_model(model, "user/tiny-vit"), **kwargs)
    out = {"error": None}
except Exception as err:
    out = {"error": type(err).__name__, "mro": [c.__name__ for c in type(err).__mro__], "message": str(err)}
out["elapsed"] = time.monotonic() - t0
print(json.dumps(out))
"""


@pytest.mark.parametrize("how", ["env", "argument"])
def test_push_adapter_times_out_on_a_hub_that_never_answers(tmp_path, how):
    with SilentServer() as server:
        env = server.client_env(tmp_path / "hf_home")
        env.pop("HF_NC_HUB_TIMEOUT", None)
        if how == "env":
            env["HF_NC_HUB_TIMEOUT"] = "1.5"
            kwargs, shown = {}, "1.5 s"
        else:
            kwargs, shown = {"timeout": 0.75}, "0.75 s"
        t0 = time.time()
        try:
            out = _run(HUNG, [json.dumps(kwargs)], env, tmp_path, "hung", timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail("push_adapter hung on a Hub endpoint that never answers")
        assert server.connections >= 1  # it really reached the silent endpoint
    assert out["error"] == "HubTimeoutError" and "TimeoutError" in out["mro"], out
    assert server.url in out["message"] and shown in out["message"], out["message"]
    assert "HF_NC_HUB_TIMEOUT" in out["message"] and "timeout=" in out["message"]
    assert out["elapsed"] < 15, out  # one request's timeout (plus a few retries at most), not forever
    assert time.time() - t0 < 60


def test_push_adapter_times_out_when_the_hub_hangs_mid_push(tmp_path):
    """The repo is created, then the pre-upload call never returns: huggingface_hub retries it (5 times, with
    backoff), each try bounded by the timeout, so push_adapter still fails in bounded time, naming the call."""
    with FakeHub() as hub:
        hub.hang = r"/preupload/"
        env = hub.client_env(tmp_path / "hf_home")
        try:
            out = _run(HUNG, [json.dumps({"timeout": 0.5})], env, tmp_path, "hung", timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("push_adapter hung on a Hub that stops answering after create_repo")
        tries = [p for m, p, status in hub.requests if "/preupload/" in p]
    assert out["error"] == "HubTimeoutError", out
    assert "/preupload/" in out["message"] and "0.5 s" in out["message"], out["message"]
    assert len(tries) == 6, tries  # the first try and huggingface_hub's 5 retries, each bounded
    assert out["elapsed"] < 60, out
