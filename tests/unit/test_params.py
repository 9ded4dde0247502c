from pathlib import Path

import pytest

from quantflow.core.params import ParamsError, load_params, parse_params


def test_repo_params_file_parses(project_root: Path) -> None:
    params = load_params(project_root / "params.yaml")
    assert params.ingest.dataset == "news_vs_comment"
    assert params.labels == ("news", "comment")
    assert params.model_name == "quantflow-news_vs_comment"


def test_unknown_key_is_named_with_the_allowed_keys() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"epochz": 3}})
    message = str(err.value)
    assert "unknown key 'train.epochz'" in message
    assert "epochs" in message and "batch_size" in message


def test_unknown_section_is_named() -> None:
    with pytest.raises(ParamsError, match="unknown key 'trian'"):
        parse_params({"trian": {}})


def test_bad_choice_names_key_and_allowed_values() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"model": "lstm"}})
    assert "train.model" in str(err.value)
    for allowed in ("'textcnn'", "'transformer'", "'fasttext'", "'ngram_textcnn'", "'char_word_textcnn'"):
        assert allowed in str(err.value)
    assert "'lstm'" in str(err.value)


def test_unknown_dataset_lists_the_builtin_ones() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"ingest": {"dataset": "tweets"}})
    assert "unknown dataset 'tweets'" in str(err.value)
    assert "news_vs_comment" in str(err.value) and "review_sentiment" in str(err.value)


def test_user_data_needs_a_label_set() -> None:
    with pytest.raises(ParamsError, match="validate.labels: required for user data"):
        parse_params({"ingest": {"dataset": "mine", "path": "data/external/mine.csv"}})


def test_overrides_are_validated_too() -> None:
    params = parse_params({})
    assert params.with_overrides({"train.epochs": 1}).train.epochs == 1
    with pytest.raises(ParamsError, match="train.epochs"):
        params.with_overrides({"train.epochs": 0})


def test_digest_changes_with_any_value() -> None:
    params = parse_params({})
    assert params.digest() == parse_params({}).digest()
    assert params.digest() != params.with_overrides({"train.lr": 0.01}).digest()


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
