import pytest

from components.core.schema import CallRecord
from tests.support.tiny_models import CITIES, build_tiny_model, weather_record


@pytest.fixture(scope="session")
def records() -> list[CallRecord]:
    return [weather_record(index, city) for index, city in enumerate(CITIES)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
