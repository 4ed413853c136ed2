fn main() -> anyhow::Result<()> {
    pulse_fleet::cli::main()
}
