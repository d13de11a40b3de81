"""The fleet model of scripts/simulate, small: its faults happen, fencing keeps every renewal to one
certificate from the CA, and without fencing the same faults make duplicates (so the check can fail)."""

import dataclasses

import pytest

from tests.harness.fleetsim import Params, simulate

FAULTY = Params(certificates=500, nodes=5, days=60, stall=0.3, slow_orders=0.3, pauses=2000, crashes=100,
                etcd_outages=60, ca_outages=60, watch_deaths=0.5)
"""Faults far more often than the documented run, so that 60 days of 500 certificates see each of them."""


@pytest.fixture(scope="module")
def fenced():
    return simulate(FAULTY)


def test_the_faults_happen(fenced):
    assert fenced.takeovers > 0 and fenced.refused_writes > 0  # leases lost mid-order, late writes refused
    assert fenced.failed_orders > 0  # CA outages and errors
    assert fenced.lock_losses > 0  # nodes that found the lock held
    assert max(fenced.due_to_served) > 3600  # an etcd or CA outage held a renewal up


def test_every_renewal_is_one_certificate_from_the_ca_and_none_comes_near_expiry(fenced):
    assert fenced.renewals > 400  # a third of the 90-day lifetime falls within 60 days for most
    assert fenced.duplicates == 0
    assert fenced.orders == fenced.renewals
    assert fenced.near_expiry == 0


def test_without_fencing_the_same_faults_make_duplicates():
    assert simulate(dataclasses.replace(FAULTY, fencing=False)).duplicates > 0


def test_short_lived_certificates_renew_at_half_their_lifetime():
    result = simulate(Params(certificates=50, nodes=3, days=12, lifetime_days=6, crashes=0, pauses=0, stall=0,
                             etcd_outages=0, ca_outages=0, ca_errors=0, slow_orders=0, watch_deaths=0))
    assert result.duplicates == 0 and result.near_expiry == 0
    assert 150 <= result.orders <= 250  # every 3 days (policy: half of a lifetime under 10 days), 4 times in 12
