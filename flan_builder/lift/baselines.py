"""scikit-learn baselines fitted on exactly the rows LIFT trains and tests on.

Classification: majority class, logistic regression, decision tree, SVM, random forest,
k-nearest neighbours, MLP; metric accuracy (%). Regression: the same families (mean
predictor, linear regression, ...); metrics RMSE and RAE (relative absolute error: the
sum of absolute errors over that of always predicting the training mean; 1.0 = no better
than the mean). Numbers are standardised and missing values imputed; text columns are
one-hot encoded. Synthetic functions add the baselines LIFT's function plots use: polynomial
regression (degree 3) and a Gaussian process (RBF + white-noise kernel, 5 optimiser restarts);
their test rows are scored against the noise-free targets.
"""

from __future__ import annotations

from typing import Any

from flan_builder.evaluation.numbers import errors
from flan_builder.sources.tables import Table

CLASSIFIERS = ("majority", "logistic_regression", "decision_tree", "svm", "random_forest", "knn", "mlp")
REGRESSORS = ("mean", "linear_regression", "decision_tree", "svm", "random_forest", "knn", "mlp")
FUNCTION_REGRESSORS = ("mean", "linear_regression", "polynomial_regression", "gaussian_process", "knn", "mlp",
                       "svm", "random_forest", "decision_tree")
KNN_NEIGHBOURS = 5  # scikit-learn's default; fewer when a training subset is smaller


def _neighbours(rows: int) -> int:
    return min(KNN_NEIGHBOURS, rows)


def baseline_names(table: Table) -> tuple[str, ...]:
    """The baselines fitted for a table (a synthetic function gets LIFT's function baselines)."""
    if table.kind == "classification":
        return CLASSIFIERS
    return FUNCTION_REGRESSORS if table.clean_target is not None else REGRESSORS


def _estimator(name: str, kind: str, seed: int, rows: int) -> Any:
    from sklearn import dummy, ensemble, gaussian_process, linear_model, neighbors, neural_network, svm, tree
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    if kind == "classification":
        return {
            "majority": lambda: dummy.DummyClassifier(strategy="most_frequent"),
            "logistic_regression": lambda: linear_model.LogisticRegression(max_iter=5000),
            "decision_tree": lambda: tree.DecisionTreeClassifier(random_state=seed),
            "svm": lambda: svm.SVC(random_state=seed),
            "random_forest": lambda: ensemble.RandomForestClassifier(random_state=seed),
            "knn": lambda: neighbors.KNeighborsClassifier(n_neighbors=_neighbours(rows)),
            "mlp": lambda: neural_network.MLPClassifier(max_iter=2000, random_state=seed),
        }[name]()
    return {
        "mean": lambda: dummy.DummyRegressor(strategy="mean"),
        "linear_regression": lambda: linear_model.LinearRegression(),
        "decision_tree": lambda: tree.DecisionTreeRegressor(random_state=seed),
        "svm": lambda: svm.SVR(),
        "random_forest": lambda: ensemble.RandomForestRegressor(random_state=seed),
        "knn": lambda: neighbors.KNeighborsRegressor(n_neighbors=_neighbours(rows)),
        "mlp": lambda: neural_network.MLPRegressor(max_iter=5000, random_state=seed),
        "polynomial_regression": lambda: make_pipeline(PolynomialFeatures(degree=3),
                                                       linear_model.LinearRegression()),
        "gaussian_process": lambda: gaussian_process.GaussianProcessRegressor(
            kernel=gaussian_process.kernels.RBF() + gaussian_process.kernels.WhiteKernel(),
            # restarts: from the default start the optimiser can settle on "all noise" (cosine: a
            # length scale of 7,880 and RMSE 6.7 instead of 0.2)
            normalize_y=True, n_restarts_optimizer=5, random_state=seed),
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


def fit_baselines(table: Table, train: list[int], test: list[int], seed: int,
                  predictions: bool = False) -> dict[str, dict[str, Any]]:
    """Every baseline family fitted on ``train`` and scored on ``test``: name -> metrics
    (with ``predictions``: also each test row's prediction, for plots)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline

    x_train, x_test = _matrix(table, train), _matrix(table, test)
    y_train = [table.target[i] for i in train]
    truth = table.clean_target if table.clean_target is not None else table.target
    y_test = [truth[i] for i in test]
    results: dict[str, dict[str, Any]] = {}
    for name in baseline_names(table):
        model = make_pipeline(_preprocessor(table), _estimator(name, table.kind, seed, len(train)))
        with warnings.catch_warnings():
            # small data (and GP length scales at their bounds); the score says enough
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, y_train)
        predicted = model.predict(x_test).tolist()
        if table.kind == "classification":
            correct = sum(int(p == t) for p, t in zip(predicted, y_test, strict=True))
            results[name] = {"accuracy": 100 * correct / len(y_test)}
        else:
            results[name] = regression_scores(y_test, [float(p) for p in predicted],
                                              sum(y_train) / len(y_train))
        if predictions:
            results[name]["predictions"] = [float(p) if table.kind != "classification" else p
                                            for p in predicted]
    return results


def fit_curves(table: Table, train: list[int], seed: int, xs: list[float]) -> dict[str, list[float]]:
    """A 1-D function's baselines fitted on ``train`` and evaluated on the grid ``xs`` (for plots)."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline

    x_train, grid = _matrix(table, train), np.array([[x] for x in xs], dtype=object)
    y_train = [table.target[i] for i in train]
    curves = {}
    for name in baseline_names(table):
        model = make_pipeline(_preprocessor(table), _estimator(name, table.kind, seed, len(train)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, y_train)
        curves[name] = [float(v) for v in model.predict(grid)]
    return curves
