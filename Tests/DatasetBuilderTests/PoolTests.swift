// DatasetBuilder tests
