from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name):
    """Requirement lines of ``requirements/<name>.txt`` without comments."""
    lines = (HERE / 'requirements' / f'{name}.txt').read_text().splitlines()
    return [
        line.split('#')[0].strip() for line in lines
        if line.split('#')[0].strip()
    ]


version = {}
exec((HERE / 'patchscale_mm' / 'version.py').read_text(), version)

setup(
    name='patchscale_mm',
    version=version['__version__'],
    description='Patch-size scaling for plain vision backbones (ViT/DeiT, '
    'Adventurer) in mmpretrain, mmsegmentation and mmdetection',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.9',
    install_requires=read_requirements('runtime'),
    extras_require={
        'tests': read_requirements('tests'),
        'optional': read_requirements('optional'),
    },
    license='Apache License 2.0',
    zip_safe=False,
)
