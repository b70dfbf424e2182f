"""The generated featviz.v1 stubs, wherever this copy of the package finds them.

An installed package (`pip install ./client/python`) carries them as
`featviz_client.v1`, generated when the wheel was built. A checkout used in
place (PYTHONPATH=build/python:client/python, as the ctest entries do) finds
the ones CMake's featviz_python_stubs target writes into build/python.
"""

try:
    from featviz_client.v1 import (  # noqa: F401
        circuits_pb2,
        circuits_pb2_grpc,
        featviz_pb2,
        featviz_pb2_grpc,
        health_pb2,
        health_pb2_grpc,
    )
except ImportError:
    try:
        from featviz.v1 import (  # noqa: F401
            circuits_pb2,
            circuits_pb2_grpc,
            featviz_pb2,
            featviz_pb2_grpc,
        )
    except ImportError:
        import os

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # The usual cause: a checkout's sources found before an installed copy
        # (the working folder, or a script's, is client/python).
        raise ImportError(
            f"featviz_client: no generated stubs in the copy imported from {here}. "
            "Install the package (pip install ./client/python) and run from "
            "outside that folder, so that the installed copy is found first; or "
            "build the featviz_python_stubs target and put <build>/python on "
            "PYTHONPATH") from None
    health_pb2 = health_pb2_grpc = None
