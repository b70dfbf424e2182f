#!/usr/bin/env python3
"""Asks a featviz server what it serves, through gRPC server reflection alone.

No compiled stubs: the grpc.reflection.v1alpha messages this script needs are
described here by hand, and everything else (featviz.v1's services and
messages) is learnt from the server at run time.

    featviz_reflect.py --server 127.0.0.1:8980 --list
    featviz_reflect.py --server 127.0.0.1:8980 --describe featviz.v1.Visualizer
    featviz_reflect.py --server 127.0.0.1:8980 --call-list-models

With no action, lists the services and describes featviz.v1.Visualizer.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "grpc.reflection.v1alpha"
_INFO_METHOD = f"/{_PACKAGE}.ServerReflection/ServerReflectionInfo"
_VISUALIZER = "featviz.v1.Visualizer"

_Field = descriptor_pb2.FieldDescriptorProto


def _reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """The subset of grpc/reflection/v1alpha/reflection.proto this script uses.

    Field numbers are the wire contract and match the real file; requests and
    responses this subset leaves out (extension lookups) are never sent.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="featviz_reflect/reflection_v1alpha_subset.proto",
        package=_PACKAGE, syntax="proto3")

    def message(name: str, fields: list[tuple], oneof: Optional[str] = None) -> None:
        # fields: (name, number, type, repeated, message type or None, in oneof)
        proto = file.message_type.add(name=name)
        if oneof:
            proto.oneof_decl.add(name=oneof)
        for field_name, number, type_, repeated, type_name, in_oneof in fields:
            field = proto.field.add(
                name=field_name, number=number, type=type_,
                label=_Field.LABEL_REPEATED if repeated else _Field.LABEL_OPTIONAL)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
            if in_oneof:
                field.oneof_index = 0

    string, bytes_, int32, msg = (_Field.TYPE_STRING, _Field.TYPE_BYTES,
                                  _Field.TYPE_INT32, _Field.TYPE_MESSAGE)
    message("ServerReflectionRequest", [
        ("host", 1, string, False, None, False),
        ("file_by_filename", 3, string, False, None, True),
        ("file_containing_symbol", 4, string, False, None, True),
        ("list_services", 7, string, False, None, True),
    ], oneof="message_request")
    message("ServerReflectionResponse", [
        ("valid_host", 1, string, False, None, False),
        ("original_request", 2, msg, False, "ServerReflectionRequest", False),
        ("file_descriptor_response", 4, msg, False, "FileDescriptorResponse", True),
        ("list_services_response", 6, msg, False, "ListServiceResponse", True),
        ("error_response", 7, msg, False, "ErrorResponse", True),
    ], oneof="message_response")
    message("FileDescriptorResponse", [
        ("file_descriptor_proto", 1, bytes_, True, None, False)])
    message("ListServiceResponse", [
        ("service", 1, msg, True, "ServiceResponse", False)])
    message("ServiceResponse", [("name", 1, string, False, None, False)])
    message("ErrorResponse", [
        ("error_code", 1, int32, False, None, False),
        ("error_message", 2, string, False, None, False)])
    return file


def _message_class(descriptor):
    """The Python class for a message descriptor, on protobuf 3.21 and later."""
    get_message_class = getattr(message_factory, "GetMessageClass", None)
    if get_message_class is not None:  # protobuf >= 4.22 (Python package)
        return get_message_class(descriptor)
    return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)


class ReflectionError(Exception):
    """The server answered a reflection request with an error_response."""


class Reflection:
    """A grpc.reflection.v1alpha client over an existing channel."""

    def __init__(self, channel: grpc.Channel, timeout: float = 10.0) -> None:
        pool = descriptor_pool.DescriptorPool()
        pool.AddSerializedFile(_reflection_file().SerializeToString())
        self._request = _message_class(
            pool.FindMessageTypeByName(f"{_PACKAGE}.ServerReflectionRequest"))
        response = _message_class(
            pool.FindMessageTypeByName(f"{_PACKAGE}.ServerReflectionResponse"))
        self._info = channel.stream_stream(
            _INFO_METHOD,
            request_serializer=self._request.SerializeToString,
            response_deserializer=response.FromString)
        self._timeout = timeout

    def _ask(self, **request_fields):
        """Sends one request on its own stream and returns the one response."""
        responses = list(self._info(iter([self._request(**request_fields)]),
                                    timeout=self._timeout))
        if len(responses) != 1:
            raise ReflectionError(f"expected one response, got {len(responses)}")
        response = responses[0]
        if response.WhichOneof("message_response") == "error_response":
            error = response.error_response
            code = grpc.StatusCode
            name = next((c.name for c in code if c.value[0] == error.error_code),
                        str(error.error_code))
            raise ReflectionError(f"{name}: {error.error_message}")
        return response

    def list_services(self) -> list[str]:
        """Full names of every service the server registers."""
        response = self._ask(list_services="")
        return [service.name for service in response.list_services_response.service]

    def _files(self, **request_fields) -> list[descriptor_pb2.FileDescriptorProto]:
        response = self._ask(**request_fields)
        return [descriptor_pb2.FileDescriptorProto.FromString(data)
                for data in response.file_descriptor_response.file_descriptor_proto]

    def files_for_symbol(self, symbol: str) -> dict[str, descriptor_pb2.FileDescriptorProto]:
        """The file declaring `symbol` and every file it imports, by name."""
        files = {f.name: f for f in self._files(file_containing_symbol=symbol)}
        # The server may leave out files it sent earlier on the stream;
        # each request here has its own stream, but ask for any gap anyway.
        missing = [d for f in files.values() for d in f.dependency if d not in files]
        while missing:
            name = missing.pop()
            if name in files:
                continue
            for f in self._files(file_by_filename=name):
                files.setdefault(f.name, f)
                missing.extend(d for d in f.dependency if d not in files)
        return files

    def pool_for_symbol(self, symbol: str) -> descriptor_pool.DescriptorPool:
        """A fresh descriptor pool holding the reflected file of `symbol`."""
        files = self.files_for_symbol(symbol)
        pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()

        def add(name: str) -> None:  # dependencies first, as the pool requires
            if name in added:
                return
            added.add(name)
            for dependency in files[name].dependency:
                add(dependency)
            pool.AddSerializedFile(files[name].SerializeToString())

        for name in files:
            add(name)
        return pool


def describe(reflection: Reflection, service: str) -> str:
    """The service's methods in .proto syntax, from its reflected file."""
    for file in reflection.files_for_symbol(service).values():
        for proto in file.service:
            full_name = f"{file.package}.{proto.name}" if file.package else proto.name
            if full_name != service:
                continue
            lines = [f"service {full_name}  // {file.name}"]
            for method in proto.method:
                request = ("stream " if method.client_streaming else "") + method.input_type.lstrip(".")
                reply = ("stream " if method.server_streaming else "") + method.output_type.lstrip(".")
                lines.append(f"  rpc {method.name}({request}) returns ({reply})")
            return "\n".join(lines)
    raise ReflectionError(f"service {service} not found in its reflected file")


def call_list_models(reflection: Reflection, channel: grpc.Channel,
                     timeout: float) -> list:
    """Calls featviz.v1.Visualizer/ListModels with message classes built from
    the reflected descriptors, following pages; returns the Model messages."""
    pool = reflection.pool_for_symbol(_VISUALIZER)
    method = pool.FindServiceByName(_VISUALIZER).methods_by_name["ListModels"]
    request_class = _message_class(method.input_type)
    response_class = _message_class(method.output_type)
    list_models = channel.unary_unary(
        f"/{_VISUALIZER}/{method.name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString)
    models, request = [], request_class()
    while True:
        response = list_models(request, timeout=timeout)
        models.extend(response.models)
        if not response.next_page_token:
            return models
        request.page_token = response.next_page_token


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("FEATVIZ_SERVER", "127.0.0.1:8980"),
                        help="host:port (default $FEATVIZ_SERVER or 127.0.0.1:8980)")
    parser.add_argument("--list", action="store_true", help="list the services")
    parser.add_argument("--describe", metavar="SERVICE", help="print a service's methods")
    parser.add_argument("--call-list-models", action="store_true",
                        help=f"call {_VISUALIZER}/ListModels from reflected descriptors")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    args = parser.parse_args(argv)
    if not (args.list or args.describe or args.call_list_models):
        args.list, args.describe = True, _VISUALIZER

    with grpc.insecure_channel(args.server) as channel:
        reflection = Reflection(channel, timeout=args.timeout)
        try:
            if args.list:
                for name in reflection.list_services():
                    print(name)
            if args.describe:
                print(describe(reflection, args.describe))
            if args.call_list_models:
                for model in call_list_models(reflection, channel, args.timeout):
                    layers = ", ".join(layer.path for layer in model.layers)
                    print(f"{model.name}  version {model.version or '-'}  "
                          f"layers: {layers}")
        except grpc.RpcError as err:
            print(f"featviz_reflect: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        except ReflectionError as err:
            print(f"featviz_reflect: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
