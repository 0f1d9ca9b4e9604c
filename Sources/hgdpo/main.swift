// The `hgdpo` executable: parses nothing itself, see Sources/Commands.
import Commands
#if canImport(Glibc)
import Glibc
#endif

setvbuf(stdout, nil, _IOLBF, 0)
exit(Commands.main(Array(CommandLine.arguments.dropFirst())))
