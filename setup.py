"""Package data from the project's top-level folders: the built-in models (``models/``) and the
schema (``proto/caffe.proto``, compiled to a descriptor set) go into the wheel beside the code that
reads them, so an installed ``rebirth`` works from any folder. Everything else is in setup.cfg."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithData(build_py):
    def run(self):
        super().run()
        if self.editable_mode:      # an editable install reads models/ and proto/ in place
            return
        pkg = Path(self.build_lib) / "deeprebirth" / "caffe"
        builtin = pkg / "builtin"
        builtin.mkdir(parents=True, exist_ok=True)
        for f in sorted((ROOT / "models").iterdir()):
            if f.suffix in (".prototxt", ".caffemodel"):
                shutil.copy2(f, builtin / f.name)
        proto_dir = pkg / "proto"
        shutil.copy2(ROOT / "proto" / "caffe.proto", proto_dir / "caffe.proto")
        from grpc_tools import protoc  # noqa: PLC0415  (a build requirement, not a runtime one)
        rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={proto_dir / 'caffe.desc'}",
                          "caffe.proto"])
        if rc != 0:
            raise SystemExit(f"protoc failed on proto/caffe.proto (exit {rc})")


setup(cmdclass={"build_py": BuildWithData})
