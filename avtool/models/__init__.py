"""nn.Modules and checkpoint key conversion, one module or package per system."""
