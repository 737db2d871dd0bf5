"""The examples run for a few steps and learn: loss / perplexity falls; the fused, nn.* and
textbook-cell runs of the language model follow the same curve with the same seed."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import birnn_classifier  # noqa: E402
import char_lm  # noqa: E402

TINY = ["--max-chars", "3000", "--hidden", "32", "--epochs", "3", "--predict-every", "3",
        "--predict-len", "10", "--no-progress", "--seed", "1"]


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_char_lm_perplexity_falls(cell, capsys):
    curves = char_lm.main(TINY + ["--cell", cell, "--lr", "0.02", "--clip", "1.0"])
    ppl = [p for _, p, _ in curves["fused"]]
    assert ppl[-1] < ppl[0]
    out = capsys.readouterr().out
    assert "| epoch |" in out and "- 'The " in out  # summary table and generated text


def test_char_lm_fused_torch_reference_follow_the_same_curve():
    curves = {impl: char_lm.main(TINY + ["--impl", impl, "--epochs", "2"])[impl]
              for impl in ("fused", "torch", "reference")}
    for impl in ("torch", "reference"):
        for (_, a, _), (_, b, _) in zip(curves["fused"], curves[impl]):
            assert abs(a - b) / b < 1e-3, (impl, a, b)


def test_char_lm_compare_random_sampling_deep_bidirectional(capsys):
    curves = char_lm.main(TINY + ["--compare", "--sampling", "random", "--num-layers", "2",
                                  "--bidirectional", "--epochs", "2"])
    assert set(curves) == {"fused", "torch"}
    assert "mean epoch time" in capsys.readouterr().out


def test_char_lm_reads_zip_and_text_corpus(tmp_path):
    import zipfile
    text = "hello world, " * 400
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as z:
        z.writestr("c.txt", text)
    for path in (tmp_path / "c.txt", tmp_path / "c.zip"):
        assert char_lm.read_corpus(str(path)) == text


def test_birnn_classifier_learns():
    losses, accuracy = birnn_classifier.run("fused", steps=150, log=lambda *_: None)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    assert accuracy > 0.6
