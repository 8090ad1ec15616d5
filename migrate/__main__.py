from migrate.cli import main

if __name__ == "__main__":  # the transform's worker processes import the main module again
    main()
