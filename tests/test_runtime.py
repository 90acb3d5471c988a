"""The torch-free runtime: imports without torch, equals onnxruntime's logits, restores order after sorting."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from abp_deploy.errors import AbpError
from abp_deploy.exporters.loading import open_session
from abp_deploy.exporters.pipeline import export_artifact
from abp_deploy.runtime import Classifier, Prediction

TEXTS = ["a good movie", "this film was awful and not great at all , not very good", "bad",
         "the movie is a very good film and it was great", "awful", "it was not bad"]


@pytest.fixture()
def exported(ragged, tokenizer, tmp_path):
    export_artifact(ragged, tokenizer, tmp_path / "onnx", optimize="O2")
    return tmp_path / "onnx"


def onnxruntime_logits(folder, tokenizer, texts, pairs=None):
    """The exported graph run directly on a transformers-tokenised, padded batch."""
    session = open_session(folder)
    batch = tokenizer(texts, pairs, padding=True, return_tensors="np")
    return session.run(["logits"], {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()})[0]


def test_runtime_imports_and_predicts_in_a_process_where_torch_and_transformers_cannot_be_imported(exported):
    script = textwrap.dedent(f"""
        import json, sys
        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError(f"{{name}} is blocked in this test")
        sys.meta_path.insert(0, Blocked())
        from abp_deploy.runtime import Classifier
        predictions = Classifier({str(exported)!r}).predict({TEXTS!r}, batch_size=4)
        print(json.dumps([[p.label, p.score] for p in predictions]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    expected = Classifier(exported).predict(TEXTS, batch_size=4)
    assert [label for label, _ in got] == [p.label for p in expected]
    np.testing.assert_allclose([score for _, score in got], [p.score for p in expected], atol=1e-6)


def test_runtime_logits_equal_onnxruntime_on_the_same_texts_and_pairs(exported, tokenizer):
    classifier = Classifier(exported)
    np.testing.assert_allclose(classifier.logits(TEXTS, batch_size=4), onnxruntime_logits(exported, tokenizer, TEXTS),
                               atol=1e-5)
    pairs = list(zip(TEXTS, reversed(TEXTS)))
    np.testing.assert_allclose(classifier.logits(pairs, batch_size=4),
                               onnxruntime_logits(exported, tokenizer, TEXTS, list(reversed(TEXTS))), atol=1e-5)


def test_order_is_restored_after_length_sorting(exported):
    classifier = Classifier(exported)
    batches = classifier.length_batches(TEXTS, batch_size=2)
    lengths = [len(e) for e in classifier.encode(TEXTS)]
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)  # the batches really are sorted
    assert [i for b in batches for i in b] != list(range(len(TEXTS)))
    one_by_one = np.concatenate([classifier.logits([text]) for text in TEXTS])
    np.testing.assert_allclose(classifier.logits(TEXTS, batch_size=2), one_by_one, atol=1e-5)


def test_predict_gives_the_configs_label_and_its_softmax_probability(exported, tokenizer):
    logits = onnxruntime_logits(exported, tokenizer, TEXTS)
    probabilities = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    predictions = Classifier(exported, threads=1).predict(TEXTS)
    assert [p.label for p in predictions] == [["negative", "positive"][i] for i in probabilities.argmax(-1)]
    np.testing.assert_allclose([p.score for p in predictions], probabilities.max(-1), atol=1e-5)


def test_regression_model_predicts_its_value_without_a_label(tiny_model_dir, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, attn_implementation="eager").eval()
    export_artifact(model, tokenizer, tmp_path / "stsb", optimize=None)
    predictions = Classifier(tmp_path / "stsb").predict(TEXTS[:2])
    with torch.no_grad():
        expected = model(**tokenizer(TEXTS[:2], padding=True, return_tensors="pt")).logits[:, 0].numpy()
    assert all(isinstance(p, Prediction) and p.label is None for p in predictions)
    np.testing.assert_allclose([p.score for p in predictions], expected, atol=1e-4)


def test_a_single_string_or_a_folder_without_tokenizer_is_refused_in_one_line(exported, tmp_path):
    with pytest.raises(AbpError, match="pass a list of texts"):
        Classifier(exported).predict("a good movie")
    with pytest.raises(AbpError, match="has no tokenizer.json or config.json"):
        Classifier(tmp_path)
