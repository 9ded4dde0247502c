"""The TF-IDF baseline the neural model has to clear: character n-grams and a logistic regression.

The evaluate step reports it beside the model; the quality study (bench/quality.py) scores it the same way.
"""

from __future__ import annotations

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from quantflow.core.params import EvaluateParams
from quantflow.core.text import clean_text


def tfidf_baseline(train: pd.DataFrame, test: pd.DataFrame, params: EvaluateParams, seed: int) -> list[str]:
    """Character 1..n-gram TF-IDF + logistic regression: the bar a neural model has to clear."""
    vectorizer = TfidfVectorizer(
        analyzer="char",
        ngram_range=(1, params.baseline_ngram_max),
        max_features=params.baseline_max_features,
        sublinear_tf=True,
        preprocessor=clean_text,
    )
    classifier = LogisticRegression(max_iter=2000, C=4.0, random_state=seed)
    classifier.fit(vectorizer.fit_transform(train["text"]), train["label"])
    return classifier.predict(vectorizer.transform(test["text"])).tolist()
