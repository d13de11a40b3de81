"""The run's back-off rule: the CA failing is backed off, a mistake on our side is not."""

import datetime

import pytest

from certrenew.config import CertificateSpec
from certrenew.errors import CertrenewError, ConfigurationError, UsageError
from certrenew.renew import _failed
from certrenew.store import FileStore

NAME = "example.com"


@pytest.mark.parametrize(("error", "backs_off"), [(CertrenewError("the CA is down"), True),
                                                  (ConfigurationError("bad ACL"), False),
                                                  (UsageError("pass --agree-tos"), False)])
def test_only_the_ca_failing_starts_the_back_off(tmp_path, error, backs_off):
    store = FileStore(tmp_path)
    store.prepare()
    now = datetime.datetime.now(datetime.timezone.utc)
    _failed(store, now, CertificateSpec(NAME, (NAME,)), error)
    record = store.load_record(NAME)
    assert record is not None and record.last_error == str(error) and record.failures == 1
    assert (record.next_attempt is not None) is backs_off
