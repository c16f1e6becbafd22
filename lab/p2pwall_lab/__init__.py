"""p2pwall's lab: throw-away namespace networks (``testbed``), emulated P2P clients and
peers, and the scenarios ``p2pwall lab`` runs (``p2pwall.lab_scenarios`` entry points).

Its own distribution (``p2pwall-lab``, in ``lab/`` of the repository), so the product's
wheel carries detection only; the e2e tests and ``./scripts/lab`` install it.
"""
