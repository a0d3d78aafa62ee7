"""A LoRA adapter merged into the embedded GGUF computes what transformers computes with it."""

import json

import numpy as np
import pytest

from conftest import embedded_installed

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not embedded_installed("smollm2"),
                                 reason="embedded SLM not installed (bash scripts/install.sh)")]


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory):
    """A LoRA adapter with random (non-zero) A and B on the query, key, value and down
    projections: a wrong layout of any of them would show in the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from corea.embedded import trainable_copy

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(trainable_copy("smollm2"))
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj",
                                                          "down_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:  # large enough to move the logits well past rounding
                parameter.normal_(0.0, 0.08)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder


def _hf_logprobs(adapter, token_ids):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from corea.embedded import trainable_copy

    base = AutoModelForCausalLM.from_pretrained(trainable_copy("smollm2"))
    model = PeftModel.from_pretrained(base, str(adapter)).eval() if adapter else base.eval()
    with torch.inference_mode():
        logits = model(torch.tensor([token_ids])).logits[0, -1].float()
    return torch.log_softmax(logits, -1).numpy()


def _llama_logprobs(gguf, token_ids):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    llm.eval(token_ids)
    logits = np.asarray(llm.scores[len(token_ids) - 1], dtype=np.float64)
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def test_merged_gguf_matches_transformers_with_the_adapter(random_adapter, tmp_path):
    from corea.embedded import smollm2_gguf
    from corea.gguf_merge import merge_lora_into_gguf

    merged = merge_lora_into_gguf(smollm2_gguf(), random_adapter, tmp_path / "merged.gguf")
    assert not list(tmp_path.glob("*.partial"))
    prompt = "<|im_start|>user\nTom has 3 apples and buys 4 more. How many?<|im_end|>\n" \
             "<|im_start|>assistant\n"
    from llama_cpp import Llama

    tokens = Llama(model_path=str(smollm2_gguf()), n_ctx=64, verbose=False, vocab_only=True) \
        .tokenize(prompt.encode(), add_bos=False, special=True)
    merged_lp = _llama_logprobs(merged, tokens)
    base_lp = _llama_logprobs(smollm2_gguf(), tokens)
    hf_lp = _hf_logprobs(random_adapter, tokens)
    top = np.argsort(hf_lp)[-20:]  # compare where the probability mass is
    # llama.cpp on the merged file agrees with transformers + adapter (Q8_0 rounding aside) ...
    assert np.abs(merged_lp[top] - hf_lp[top]).max() < 0.25
    assert int(np.argmax(merged_lp)) == int(np.argmax(hf_lp))
    # ... and the adapter did change the model: the base file is far from both
    assert np.abs(base_lp[top] - hf_lp[top]).max() > 1.0


def test_non_lora_or_empty_adapters_are_refused(tmp_path):
    from corea.embedded import smollm2_gguf
    from corea.gguf_merge import merge_lora_into_gguf

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "r": 1,
                                                              "lora_alpha": 1}))
    with pytest.raises(ValueError, match="only LoRA merges"):
        merge_lora_into_gguf(smollm2_gguf(), tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
