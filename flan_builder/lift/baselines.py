"""scikit-learn baselines fitted on exactly the rows LIFT trains and tests on.

Classification: majority class, logistic regression, decision tree, SVM, random forest,
k-nearest neighbours, MLP; metric accuracy (%). Regression: the same families (mean
predictor, linear regression, ...); metrics RMSE and RAE (relative absolute error: the
sum of absolute errors over that of always predicting the training mean; 1.0 = no better
than the mean). Numbers are standardised and missing values imputed; text columns are
one-hot encoded.
"""

from __future__ import annotations

from typing import Any

from flan_builder.evaluation.numbers import errors
from flan_builder.sources.tables import Table

CLASSIFIERS = ("majority", "logistic_regression", "decision_tree", "svm", "random_forest", "knn", "mlp")
REGRESSORS = ("mean", "linear_regression", "decision_tree", "svm", "random_forest", "knn", "mlp")


def _estimator(name: str, kind: str, seed: int) -> Any:
    from sklearn import dummy, ensemble, linear_model, neighbors, neural_network, svm, tree

    if kind == "classification":
        return {
            "majority": lambda: dummy.DummyClassifier(strategy="most_frequent"),
            "logistic_regression": lambda: linear_model.LogisticRegression(max_iter=5000),
            "decision_tree": lambda: tree.DecisionTreeClassifier(random_state=seed),
            "svm": lambda: svm.SVC(random_state=seed),
            "random_forest": lambda: ensemble.RandomForestClassifier(random_state=seed),
            "knn": lambda: neighbors.KNeighborsClassifier(),
            "mlp": lambda: neural_network.MLPClassifier(max_iter=2000, random_state=seed),
        }[name]()
    return {
        "mean": lambda: dummy.DummyRegressor(strategy="mean"),
        "linear_regression": lambda: linear_model.LinearRegression(),
        "decision_tree": lambda: tree.DecisionTreeRegressor(random_state=seed),
        "svm": lambda: svm.SVR(),
        "random_forest": lambda: ensemble.RandomForestRegressor(random_state=seed),
        "knn": lambda: neighbors.KNeighborsRegressor(),
        "mlp": lambda: neural_network.MLPRegressor(max_iter=5000, random_state=seed),
    }[name]()


def _preprocessor(table: Table) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric, text = [], []
    for column in range(len(table.feature_names)):
        values = [row[column] for row in table.rows if row[column] is not None]
        (numeric if all(isinstance(v, (int, float)) for v in values) else text).append(column)
    parts = []
    if numeric:
        parts.append(("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric))
    if text:
        parts.append(("text", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                            OneHotEncoder(handle_unknown="ignore")), text))
    return ColumnTransformer(parts)


def _matrix(table: Table, indices: list[int]) -> Any:
    import numpy as np

    return np.array([[np.nan if v is None else v for v in table.rows[i]] for i in indices], dtype=object)


def regression_scores(truth: list[float], predicted: list[float], train_mean: float) -> dict[str, float]:
    """RMSE, MAE and RAE (sum |error| / sum |truth - training mean|)."""
    return errors(truth, predicted, train_mean)


def fit_baselines(table: Table, train: list[int], test: list[int], seed: int) -> dict[str, dict[str, float]]:
    """Every baseline family fitted on ``train`` and scored on ``test``: name -> metrics."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline

    x_train, x_test = _matrix(table, train), _matrix(table, test)
    y_train = [table.target[i] for i in train]
    y_test = [table.target[i] for i in test]
    results: dict[str, dict[str, float]] = {}
    names = CLASSIFIERS if table.kind == "classification" else REGRESSORS
    for name in names:
        model = make_pipeline(_preprocessor(table), _estimator(name, table.kind, seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # small data; the score says enough
            model.fit(x_train, y_train)
        predicted = model.predict(x_test).tolist()
        if table.kind == "classification":
            correct = sum(int(p == t) for p, t in zip(predicted, y_test, strict=True))
            results[name] = {"accuracy": 100 * correct / len(y_test)}
        else:
            results[name] = regression_scores(y_test, [float(p) for p in predicted],
                                              sum(y_train) / len(y_train))
    return results
