"""A real gRPC service for the HTTP/2 router's end-to-end tests (issue 11).

test.v1.Echo (echo.proto, compiled at test time by :func:`stubs.compile_echo`) has a method of
each kind; :mod:`servers` runs recording instances of it on 127.0.0.1, :mod:`balancer` puts
replicas behind one port as kube-proxy would, :mod:`clients` calls it and :mod:`payload`
makes the bytes both ends can hash.
"""
