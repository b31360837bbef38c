from __future__ import annotations

import pytest
from medshared.testing import shared_data_dir


@pytest.fixture(scope="session")
def syn_dir(tmp_path_factory):
    """A small synthetic ICBHI-layout database (written once per session)."""
    from lungcvt.synthetic import generate_icbhi

    d = tmp_path_factory.mktemp("icbhi_syn")
    generate_icbhi(d, n_patients=8, recordings_per_patient=(1, 2), cycles_per_recording=(3, 5), seed=1)
    return d


@pytest.fixture(scope="session")
def icbhi_real():
    root = shared_data_dir()
    if root is None or not (root / "icbhi").is_dir():
        pytest.skip("real ICBHI samples absent (../shared/data/icbhi next to the repo; set MEDREPRO_SHARED_DATA)")
    return root / "icbhi"
