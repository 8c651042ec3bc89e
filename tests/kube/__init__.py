"""A stand-in Kubernetes API server for the tests (see :mod:`tests.kube.apiserver`)."""
