"""The churn models every test here serves, trained once per session at test time."""

from __future__ import annotations

import pytest

from infermesh_model_gateway.testing import ChurnModels, train_churn_models


@pytest.fixture(scope="session")
def churn_models(tmp_path_factory: pytest.TempPathFactory) -> ChurnModels:
    return train_churn_models(tmp_path_factory.mktemp("models"))
