from krishna_ai.cli.main import main

if __name__ == "__main__":  # not when a spawned worker process (matformer's check) imports it
    raise SystemExit(main())
