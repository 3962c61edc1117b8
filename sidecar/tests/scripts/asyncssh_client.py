"""asyncssh against podsftp-sidecar: upload, download, listing, rename, and a symlink that must
be created where asked (asyncssh swaps SYMLINK's arguments only for servers whose version string
names OpenSSH). Prints "OK" on success; raises otherwise."""
import asyncio
import sys

import asyncssh

host, port, user, password = sys.argv[1:5]


async def main():
    async with asyncssh.connect(host, port=int(port), username=user, password=password,
                                known_hosts=None, client_keys=None) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.mkdir("d")
            async with sftp.open("f.txt", "wb") as f:
                await f.write(b"asyncssh " * 1000)
            await sftp.symlink("f.txt", "/d/s.txt")
            assert await sftp.readlink("/d/s.txt") == "f.txt", "link not at /d/s.txt"
            await sftp.rename("f.txt", "g.txt")
            async with sftp.open("g.txt", "rb") as f:
                assert await f.read() == b"asyncssh " * 1000, "downloaded bytes differ"
            assert sorted(await sftp.listdir("/")) == [".", "..", "d", "g.txt"], await sftp.listdir("/")
    print("OK")


asyncio.run(main())
