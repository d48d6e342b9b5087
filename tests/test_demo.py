"""The demo's fine-tuning step says how to get SST-2 when it is not there."""

from t5x_lite import demo


def test_demo_explains_how_to_fine_tune_without_sst2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("T5X_LITE_DATA_DIR", str(tmp_path))  # a data dir without sst2/
    assert demo.finetune_on_sst2(str(tmp_path / "run")) is None
    out = capsys.readouterr().out
    assert "point T5X_LITE_DATA_DIR at a folder holding sst2/train.tsv" in out
    assert not (tmp_path / "run").exists()
