from importlib import metadata

import pytest

from certrenew.errors import CertrenewError
from certrenew.system.requirements import check_acme_stack


def fake_versions(monkeypatch, **installed):
    def version(package):
        if package not in installed:
            raise metadata.PackageNotFoundError(package)
        return installed[package]

    monkeypatch.setattr(metadata, "version", version)


def test_the_installed_acme_stack_is_new_enough():
    check_acme_stack()


@pytest.mark.parametrize("acme, josepy", [("5.0.0", "2.0.0"), ("5.9.0", "2.2.0"), ("5", "2"), ("5.1.0rc1", "2.0")])
def test_new_enough_versions_pass(monkeypatch, acme, josepy):
    fake_versions(monkeypatch, acme=acme, josepy=josepy)
    check_acme_stack()


@pytest.mark.parametrize("installed, says", [
    ({"acme": "2.1.0", "josepy": "1.13.0"}, "^acme 2.1.0 is too old: certrenew needs acme >= 5.0; install with pip$"),
    ({"acme": "4.2.0", "josepy": "2.0.0"}, "^acme 4.2.0 is too old"),
    ({"acme": "5.0.0", "josepy": "1.15.0"}, "^josepy 1.15.0 is too old: certrenew needs josepy >= 2.0"),
    ({"josepy": "2.0.0"}, "^acme is not installed: certrenew needs acme >= 5.0; install with pip$"),
])
def test_old_or_missing_versions_fail_with_one_line(monkeypatch, installed, says):
    fake_versions(monkeypatch, **installed)
    with pytest.raises(CertrenewError, match=says):
        check_acme_stack()


def test_a_run_with_work_checks_the_stack_before_ordering(monkeypatch, tmp_path):
    from certrenew.config import CertificateSpec, Settings
    from certrenew.renewal.renew import run

    fake_versions(monkeypatch, acme="2.1.0", josepy="1.13.0")
    (tmp_path / "ssl").mkdir()
    settings = Settings.of(state_dir=tmp_path / "state", ssl_dir=tmp_path / "ssl", directory="https://127.0.0.1:9/")
    with pytest.raises(CertrenewError, match="^acme 2.1.0 is too old"):
        run(settings, [CertificateSpec("a.example", ("a.example",))])
