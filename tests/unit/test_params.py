from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from quantflow.core.params import Params, ParamsError, load_params, parse_params
from tests.params_helpers import PARAMS_FILE, shipped_params


def shipped_with(section: str, **changes: Any) -> dict[str, Any]:
    """The repo's params.yaml as a mapping, with keys of one section replaced (unknown keys allowed here)."""
    data = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    data[section].update(changes)
    return data


def test_repo_params_file_parses(project_root: Path) -> None:
    params = load_params(project_root / "params.yaml")
    assert params.ingest.dataset == "news_vs_comment"
    assert params.labels == ("news", "comment")
    assert params.model_name == "quantflow-news_vs_comment"


def test_every_key_of_params_yaml_is_required(tmp_path: Path) -> None:
    """No value is assumed: a params file without a key fails, naming the dotted key and the fix."""
    for section, key in [("train", "buckets"), ("compress", "policy"), ("ingest", "max_rows_per_class")]:
        data = shipped_with(section)
        del data[section][key]
        path = tmp_path / f"no-{key}.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        with pytest.raises(ParamsError) as err:
            load_params(path)
        assert str(err.value) == (
            f"{path}: missing key '{section}.{key}': params.yaml must set every key (no value is assumed); "
            "copy it from the repository's params.yaml"
        )
    data = shipped_with("nightly")
    del data["nightly"]["drift"]
    with pytest.raises(ParamsError, match="missing key 'nightly.drift'"):
        parse_params(data)


def test_unknown_key_is_named_with_the_allowed_keys() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(shipped_with("train", epochz=3))
    message = str(err.value)
    assert message.startswith("params.yaml: unknown key 'train.epochz'")
    assert "epochs" in message and "batch_size" in message


def test_unknown_section_is_named() -> None:
    data = shipped_with("train")
    data["trian"] = {}
    with pytest.raises(ParamsError, match="unknown key 'trian'"):
        parse_params(data)


def test_bad_choice_names_key_and_allowed_values() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(shipped_with("train", model="lstm"))
    assert "train.model" in str(err.value)
    for allowed in ("'textcnn'", "'transformer'", "'fasttext'", "'ngram_textcnn'", "'char_word_textcnn'"):
        assert allowed in str(err.value)
    assert "'lstm'" in str(err.value)


def test_unknown_dataset_lists_the_builtin_ones() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(shipped_with("ingest", dataset="tweets"))
    assert "unknown dataset 'tweets'" in str(err.value)
    assert "news_vs_comment" in str(err.value) and "review_sentiment" in str(err.value)


def test_user_data_needs_a_label_set() -> None:
    with pytest.raises(ParamsError, match="validate.labels: required for user data"):
        parse_params(shipped_with("ingest", dataset="mine", path="data/external/mine.csv"))


def test_overrides_are_validated_too() -> None:
    params = shipped_params()
    assert params.with_overrides({"train.epochs": 1}).train.epochs == 1
    with pytest.raises(ParamsError, match="train.epochs"):
        params.with_overrides({"train.epochs": 0})


def test_digest_changes_with_any_value() -> None:
    params = shipped_params()
    assert params.digest() == parse_params(shipped_with("train")).digest()
    assert params.digest() != params.with_overrides({"train.lr": 0.01}).digest()


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_no_section_model_holds_a_value() -> None:
    """params.yaml is the one place a shipped value is written: every field of every model is required."""
    models, with_value = [Params], []
    while models:
        model = models.pop()
        for name, field in model.model_fields.items():
            if not field.is_required():
                with_value.append(f"{model.__name__}.{name}")
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                models.append(field.annotation)
    assert with_value == []
