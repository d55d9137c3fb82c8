from rateguard.cli import main

main()
