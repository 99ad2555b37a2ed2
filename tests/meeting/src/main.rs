//! `recfleet-meeting`: serves the bundled test meeting on loopback for the demo and for people
//! trying the bot by hand. Prints its base URL on stdout, then serves until stopped.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "recfleet-meeting", about = "Serves recfleet's bundled test meeting on loopback")]
struct Cli {
    /// Address to listen on (loopback, or a private address such as a Docker network's gateway).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let private = match cli.listen.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private(),
        std::net::IpAddr::V6(ip) => ip.is_loopback(),
    };
    anyhow::ensure!(private, "the test meeting only listens on loopback or private addresses, not {}", cli.listen);
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    println!("http://{}", listener.local_addr()?);
    axum::serve(listener, recfleet_meeting::router()).await?;
    Ok(())
}
